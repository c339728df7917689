-- Current features for the profiles of one profile batch, with the same definitions as training.
SELECT
    f.*,
    $profile_batch AS profile_batch
FROM ($user_features) AS f
