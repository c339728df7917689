-- The stored scoring features of one profile batch, in profile order (the scores file is then the same
-- bytes whenever the features and the model are the same).
SELECT * FROM $table WHERE profile_batch = $profile_batch ORDER BY userid
