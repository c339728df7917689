-- Profiles per propensity interval, from the latest score of each profile.
SELECT
    $size_columns
FROM ($latest_scores) AS latest
