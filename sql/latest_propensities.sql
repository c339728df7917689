-- The latest propensity of every scored profile (for the reach table and histogram).
SELECT propensity FROM ($latest_scores) AS latest
