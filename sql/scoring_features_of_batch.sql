-- The stored scoring features of one profile batch.
SELECT * FROM $table WHERE profile_batch = $profile_batch
