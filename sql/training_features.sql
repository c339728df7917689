-- One row per profile not converted before the cutoff: features as of the cutoff and the label,
-- a web.formFilledOut inside [cutoff, horizon_end]. Unlike the reference, no positive is
-- featurized at its own conversion row and "ever converted" is bounded by the horizon.
SELECT
    f.*,
    CASE WHEN c.converted_at >= $cutoff AND c.converted_at <= $horizon_end THEN 1 ELSE 0 END AS label
FROM ($user_features) AS f
LEFT JOIN (
    SELECT userid, MIN(timestamp) AS converted_at
    FROM $events
    WHERE event_type = 'web.formFilledOut'
    GROUP BY userid
) AS c ON c.userid = f.userid
WHERE c.converted_at IS NULL OR c.converted_at >= $cutoff
