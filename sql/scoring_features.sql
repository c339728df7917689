-- Current features for the profiles of some profile batches, with the same definitions as training.
SELECT f.*
FROM ($user_features) AS f
