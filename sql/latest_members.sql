-- Userid and latest propensity of every scored profile, for cutting all audiences in one pass.
SELECT userid, propensity FROM ($latest_scores) AS latest ORDER BY userid
