-- How many users have exactly each combination of event types: bit i of type_mask is set when the
-- user has an event of the i-th type of $type_bit (a CASE giving each type its bit). The distinct
-- users per type and the users sharing every pair of types follow from these few rows; one pass
-- over the events replaces a COUNT(DISTINCT) per type and a self-join of (user, type) pairs.
SELECT
    type_mask,
    COUNT(*) AS users
FROM (
    SELECT userid, BIT_OR($type_bit) AS type_mask
    FROM $events
    GROUP BY userid
) AS per_user
GROUP BY type_mask
