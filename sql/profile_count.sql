-- Profiles in the profile dataset.
SELECT COUNT(*) AS profiles FROM ($profiles) AS p
