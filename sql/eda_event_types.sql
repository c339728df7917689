-- Funnel per event type: events and distinct users (the reference counted events where it said users).
SELECT
    event_type,
    COUNT(*) AS events,
    COUNT(DISTINCT userid) AS users
FROM $events
GROUP BY event_type
ORDER BY events DESC
