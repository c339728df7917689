-- Events per week and type: the activity curve over the timeline.
SELECT
    DATE_TRUNC('week', timestamp) AS week,
    event_type,
    COUNT(*) AS events
FROM $events
GROUP BY DATE_TRUNC('week', timestamp), event_type
ORDER BY week, event_type
