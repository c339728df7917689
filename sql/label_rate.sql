-- Rows and positive labels of the training table.
SELECT COUNT(*) AS profiles, SUM(label) AS positives FROM $table
