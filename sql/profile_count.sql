-- Profiles in the profile dataset, optionally of one batch.
SELECT COUNT(*) AS profiles FROM $profiles WHERE $profile_filter
