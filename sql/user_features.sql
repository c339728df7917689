-- Per-profile behaviour features as of $as_of, from events strictly before it (point in time).
-- The reference's 7 counts and 7 "minutes since last" recencies (its propositionDismiss recency fixed
-- to the full decisioning.* type), plus counts and recencies of the 5 other event types that move a
-- user's propensity, and two activity windows. Profiles with no events get zero counts, null recencies.
-- $profiles is the current view of the profile dataset (one record per userid, lib/merge.py);
-- profile_batch is the platform batch that last touched the profile (Query Service's _acp_batchid).
SELECT
    p.userid,
    p._acp_batchid AS profile_batch,
    $as_of AS as_of,
    SUM(CASE WHEN e.event_type = 'directMarketing.emailSent' THEN 1 ELSE 0 END) AS emails_received,
    SUM(CASE WHEN e.event_type = 'directMarketing.emailOpened' THEN 1 ELSE 0 END) AS emails_opened,
    SUM(CASE WHEN e.event_type = 'directMarketing.emailClicked' THEN 1 ELSE 0 END) AS emails_clicked,
    SUM(CASE WHEN e.event_type = 'commerce.productViews' THEN 1 ELSE 0 END) AS product_views,
    SUM(CASE WHEN e.event_type = 'decisioning.propositionInteract' THEN 1 ELSE 0 END) AS proposition_interacts,
    SUM(CASE WHEN e.event_type = 'decisioning.propositionDismiss' THEN 1 ELSE 0 END) AS proposition_dismisses,
    SUM(CASE WHEN e.event_type = 'web.webinteraction.linkClicks' THEN 1 ELSE 0 END) AS web_link_clicks,
    SUM(CASE WHEN e.event_type = 'advertising.impressions' THEN 1 ELSE 0 END) AS ad_impressions,
    SUM(CASE WHEN e.event_type = 'advertising.clicks' THEN 1 ELSE 0 END) AS ad_clicks,
    SUM(CASE WHEN e.event_type = 'web.webpagedetails.pageViews' THEN 1 ELSE 0 END) AS page_views,
    SUM(CASE WHEN e.event_type = 'commerce.purchases' THEN 1 ELSE 0 END) AS purchases,
    SUM(CASE WHEN e.event_type = 'decisioning.propositionDisplay' THEN 1 ELSE 0 END) AS proposition_displays,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'directMarketing.emailSent' THEN e.timestamp END), $as_of) AS minutes_since_emails_received,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'directMarketing.emailOpened' THEN e.timestamp END), $as_of) AS minutes_since_emails_opened,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'directMarketing.emailClicked' THEN e.timestamp END), $as_of) AS minutes_since_emails_clicked,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'commerce.productViews' THEN e.timestamp END), $as_of) AS minutes_since_product_views,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'decisioning.propositionInteract' THEN e.timestamp END), $as_of) AS minutes_since_proposition_interacts,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'decisioning.propositionDismiss' THEN e.timestamp END), $as_of) AS minutes_since_proposition_dismisses,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'web.webinteraction.linkClicks' THEN e.timestamp END), $as_of) AS minutes_since_web_link_clicks,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'advertising.impressions' THEN e.timestamp END), $as_of) AS minutes_since_ad_impressions,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'advertising.clicks' THEN e.timestamp END), $as_of) AS minutes_since_ad_clicks,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'web.webpagedetails.pageViews' THEN e.timestamp END), $as_of) AS minutes_since_page_views,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'commerce.purchases' THEN e.timestamp END), $as_of) AS minutes_since_purchases,
    MINUTES_BETWEEN(MAX(CASE WHEN e.event_type = 'decisioning.propositionDisplay' THEN e.timestamp END), $as_of) AS minutes_since_proposition_displays,
    SUM(CASE WHEN e.timestamp >= $as_of - INTERVAL '7 days' THEN 1 ELSE 0 END) AS events_last_7_days,
    SUM(CASE WHEN e.timestamp >= $as_of - INTERVAL '28 days' THEN 1 ELSE 0 END) AS events_last_28_days
FROM ($profiles) AS p
LEFT JOIN $events AS e
    ON e.userid = p.userid AND e.timestamp < $as_of
WHERE $profile_filter
GROUP BY p.userid, p._acp_batchid
