-- Profiles per platform batch of the profile dataset, for the given batches.
SELECT _acp_batchid AS profile_batch, COUNT(*) AS profiles
FROM ($profiles) AS p
WHERE _acp_batchid IN $profile_batches
GROUP BY _acp_batchid
