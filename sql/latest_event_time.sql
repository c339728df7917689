-- The newest event: the end of the observed timeline.
SELECT MAX(timestamp) AS latest FROM $events
