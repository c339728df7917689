-- Profiles whose first conversion lies before the cutoff (excluded from training).
SELECT COUNT(*) AS users
FROM (
    SELECT userid
    FROM $events
    WHERE event_type = 'web.formFilledOut'
    GROUP BY userid
    HAVING MIN(timestamp) < $cutoff
) AS converted
