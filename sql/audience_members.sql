-- Members of a propensity-interval audience: profiles whose latest score is in [lower, upper).
SELECT userid, propensity
FROM ($latest_scores) AS latest
WHERE propensity >= $lower AND propensity < $upper
ORDER BY userid
