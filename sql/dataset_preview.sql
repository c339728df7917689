-- A few rows of a dataset, for previews in the UI.
SELECT * FROM $table LIMIT 10
