-- Profiles per propensity interval, from the latest score of each profile.
SELECT
    COUNT(*) AS scored_profiles,
    $size_columns
FROM ($latest_scores) AS latest
