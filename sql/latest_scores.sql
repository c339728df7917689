-- The profile view of the scores dataset: the latest score per profile wins, as AEP's profile merge.
SELECT userid, propensity, decile, model_name, model_version, scored_at, profile_batch
FROM (
    SELECT
        s.*,
        ROW_NUMBER() OVER (PARTITION BY s.userid ORDER BY s.scored_at DESC, s._acp_batchid DESC) AS recency
    FROM $scores AS s
) AS ranked
WHERE recency = 1
