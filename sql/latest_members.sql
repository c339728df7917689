-- Every scored profile with its latest propensity and its current contact attributes (what a
-- destination needs), for cutting all audiences in one pass.
SELECT s.userid, p.email, p.first_name, p.last_name, s.propensity
FROM ($latest_scores) AS s
JOIN ($profiles) AS p ON p.userid = s.userid
ORDER BY s.userid
