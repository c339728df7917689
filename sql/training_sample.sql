-- A sample of the training table for EDA (userids are hashes, so their order is random);
-- 50,000 rows is Query Service's cap on interactive results.
SELECT * FROM $table ORDER BY userid LIMIT 50000
