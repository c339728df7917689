-- Event co-occurrence: for each pair of event types, how many users have both.
SELECT
    a.event_type AS event_type_a,
    b.event_type AS event_type_b,
    COUNT(*) AS users
FROM (SELECT DISTINCT userid, event_type FROM $events) AS a
JOIN (SELECT DISTINCT userid, event_type FROM $events) AS b
    ON a.userid = b.userid AND a.event_type <= b.event_type
GROUP BY a.event_type, b.event_type
ORDER BY users DESC
