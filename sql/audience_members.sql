-- Members of a propensity-interval audience: profiles whose latest score is in [lower, upper), with their
-- current contact attributes.
SELECT s.userid, p.email, p.first_name, p.last_name, s.propensity
FROM ($latest_scores) AS s
JOIN ($profiles) AS p ON p.userid = s.userid
WHERE s.propensity >= $lower AND s.propensity < $upper
ORDER BY s.userid
