-- Session summaries (the PostgreSQL schema in ../postgres has the same shape). Conventions as in
-- 0001: INTEGER microsecond timestamps, STRICT tables. Durations are INTEGER milliseconds,
-- truncated; NULL where a figure does not apply. The exact definition of every column is in
-- docs/ANALYTICS.md, "Session summaries": the two views below are that definition in SQL, used
-- both by the relay (one session at a time, in the transaction that closes it) and, at the end of
-- this file, for the sessions closed before it.

-- One row per session: a CEC session once it is closed (kind 'cec', session_id = sessions.id);
-- a Tencent Desk session (kind 'tim', tenant = the app, session_id = Desk's SessionId) as of its
-- latest Desk.SessionEventNotify callback.
CREATE TABLE session_summaries (
    kind                     TEXT    NOT NULL,
    tenant                   TEXT    NOT NULL,
    user_id                  TEXT    NOT NULL,
    session_id               TEXT    NOT NULL,
    opened_at                INTEGER NOT NULL,
    closed_at                INTEGER NOT NULL,
    duration_ms              INTEGER NOT NULL,
    close_reason             TEXT,
    channel_config_id        TEXT,
    locale                   TEXT,
    queued                   INTEGER CHECK (queued IN (0, 1)),
    queue_wait_ms            INTEGER,
    max_queue_position       INTEGER,
    first_robot_answer_ms    INTEGER,
    first_agent_answer_ms    INTEGER,
    agent_response_median_ms INTEGER,
    customer_messages        INTEGER NOT NULL,
    robot_messages           INTEGER NOT NULL,
    agent_messages           INTEGER NOT NULL,
    system_messages          INTEGER,
    files_from_customer      INTEGER,
    files_to_customer        INTEGER,
    transfers                INTEGER,
    satisfaction_evaluation  INTEGER CHECK (satisfaction_evaluation BETWEEN 1 AND 5),
    -- The customer's words: blanked by retention with the rest of the transcript.
    satisfaction_comment     TEXT,
    robot_feedback_positive  INTEGER,
    robot_feedback_negative  INTEGER,
    leave_messages           INTEGER,
    offline_messages         INTEGER,
    robot_streams            INTEGER,
    robot_stream_chars       INTEGER,
    -- When this row was (last) computed.
    summarized_at            INTEGER NOT NULL,
    PRIMARY KEY (kind, tenant, session_id)
) STRICT;

-- Listing and reports by time, of all tenants or one; a customer's summaries (erasure).
CREATE INDEX session_summaries_closed ON session_summaries (closed_at, session_id);
CREATE INDEX session_summaries_tenant_closed ON session_summaries (tenant, closed_at, session_id);
CREATE INDEX session_summaries_user ON session_summaries (kind, tenant, user_id);

-- A customer's sessions, latest first (a satisfaction given after the close is the latest
-- session's).
CREATE INDEX sessions_user ON sessions (kind, tenant, user_id, opened_at);

-- A Desk session's callbacks, found without reading the app's others.
CREATE INDEX tim_callbacks_desk_session ON tim_callbacks (app, json_extract(body, '$.SessionId'))
    WHERE command = 'Desk.SessionEventNotify';

-- The summary of every closed CEC session, from its stored rows. A session's rows are those of
-- its user with its session_id (read through the per-user indexes). A customer message is an
-- up CHAT the contact center accepted (status 'sent'); a robot, agent or system message is a
-- down row of that sourceType that is not a control (controlType CHAT or none).
CREATE VIEW cec_session_summaries AS
SELECT
    s.kind,
    s.tenant,
    s.user_id,
    s.id AS session_id,
    s.opened_at,
    s.closed_at,
    (s.closed_at - s.opened_at) / 1000 AS duration_ms,
    s.close_reason,
    s.channel_config_id,
    (SELECT json_extract(e.body, '$.locale') FROM events e
      WHERE e.kind = s.kind AND e.tenant = s.tenant AND e.user_id = s.user_id
        AND e.session_id = s.id AND e.event_type = 'session.opened'
        AND json_type(e.body, '$.locale') = 'text'
      ORDER BY e.created_at, e.id LIMIT 1) AS locale,
    EXISTS (SELECT 1 FROM events e
      WHERE e.kind = s.kind AND e.tenant = s.tenant AND e.user_id = s.user_id
        AND e.session_id = s.id AND e.event_type = 'session.queued') AS queued,
    -- From the first transfer request or "Queuing..." answer to the first agent message after it.
    (SELECT (SELECT min(a.created_at) FROM messages a
              WHERE a.kind = s.kind AND a.tenant = s.tenant AND a.user_id = s.user_id
                AND a.session_id = s.id AND a.direction = 'down' AND a.source_type = 'AGENT'
                AND coalesce(a.control_type, 'CHAT') = 'CHAT' AND a.created_at >= q.start)
            - q.start
       FROM (SELECT min(u.created_at) AS start FROM messages u
              WHERE u.kind = s.kind AND u.tenant = s.tenant AND u.user_id = s.user_id
                AND u.session_id = s.id AND u.direction = 'up' AND u.status = 'sent'
                AND u.control_type <> 'DISCONNECT'
                AND (u.control_type = 'TRANS2AGENT' OR u.result_code = '11')) AS q
    ) / 1000 AS queue_wait_ms,
    (SELECT max(json_extract(e.body, '$.position')) FROM events e
      WHERE e.kind = s.kind AND e.tenant = s.tenant AND e.user_id = s.user_id
        AND e.session_id = s.id AND e.event_type = 'session.queued'
        AND json_type(e.body, '$.position') = 'integer') AS max_queue_position,
    ((SELECT min(m.created_at) FROM messages m
       WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
         AND m.session_id = s.id AND m.direction = 'down' AND m.source_type = 'ROBOT'
         AND coalesce(m.control_type, 'CHAT') = 'CHAT') - s.opened_at) / 1000
        AS first_robot_answer_ms,
    ((SELECT min(m.created_at) FROM messages m
       WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
         AND m.session_id = s.id AND m.direction = 'down' AND m.source_type = 'AGENT'
         AND coalesce(m.control_type, 'CHAT') = 'CHAT') - s.opened_at) / 1000
        AS first_agent_answer_ms,
    -- The median of the agents' responses: every customer message that follows an agent message
    -- (the start of a customer's turn) to the next agent message.
    (SELECT CAST(avg(r.ms) AS INTEGER) FROM (
        SELECT t.ms, row_number() OVER (ORDER BY t.ms) AS i, count(*) OVER () AS n FROM (
            SELECT (c.next_agent - c.at) / 1000 AS ms FROM (
                SELECT m.created_at AS at, m.direction AS dir,
                       lag(m.direction) OVER (ORDER BY m.created_at, m.id) AS prev_dir,
                       min(CASE WHEN m.direction = 'down' THEN m.created_at END) OVER (
                           ORDER BY m.created_at, m.id
                           ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_agent
                FROM messages m
                WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
                  AND m.session_id = s.id
                  AND ((m.direction = 'up' AND m.status = 'sent' AND m.control_type = 'CHAT')
                    OR (m.direction = 'down' AND m.source_type = 'AGENT'
                        AND coalesce(m.control_type, 'CHAT') = 'CHAT'))
            ) AS c
            WHERE c.dir = 'up' AND c.prev_dir = 'down' AND c.next_agent IS NOT NULL
        ) AS t
     ) AS r
     WHERE r.i IN ((r.n + 1) / 2, (r.n + 2) / 2)) AS agent_response_median_ms,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'up' AND m.status = 'sent'
        AND m.control_type = 'CHAT') AS customer_messages,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'down' AND m.source_type = 'ROBOT'
        AND coalesce(m.control_type, 'CHAT') = 'CHAT') AS robot_messages,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'down' AND m.source_type = 'AGENT'
        AND coalesce(m.control_type, 'CHAT') = 'CHAT') AS agent_messages,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'down' AND m.source_type = 'SYSTEM'
        AND coalesce(m.control_type, 'CHAT') = 'CHAT') AS system_messages,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'up' AND m.status = 'sent'
        AND m.control_type = 'CHAT'
        AND m.media_type IN ('IMAGE', 'AUDIO', 'VIDEO', 'FILE', 'FILE_IMAGE', 'FILE_VIDEO'))
        AS files_from_customer,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'down'
        AND m.media_type IN ('IMAGE', 'AUDIO', 'VIDEO', 'FILE', 'FILE_IMAGE', 'FILE_VIDEO'))
        AS files_to_customer,
    (SELECT count(*) FROM messages m
      WHERE m.kind = s.kind AND m.tenant = s.tenant AND m.user_id = s.user_id
        AND m.session_id = s.id AND m.direction = 'up' AND m.status = 'sent'
        AND m.control_type = 'TRANS2AGENT') AS transfers,
    -- The customer's evaluation the contact center accepted last, and its comment.
    (SELECT CAST(x.score AS INTEGER) FROM satisfactions x
      WHERE x.kind = s.kind AND x.tenant = s.tenant AND x.user_id = s.user_id
        AND x.session_id = s.id AND x.source = 'customer' AND x.result_code = '0'
        AND x.score IN ('1', '2', '3', '4', '5')
      ORDER BY x.created_at DESC, x.id DESC LIMIT 1) AS satisfaction_evaluation,
    (SELECT nullif(x.comment, '') FROM satisfactions x
      WHERE x.kind = s.kind AND x.tenant = s.tenant AND x.user_id = s.user_id
        AND x.session_id = s.id AND x.source = 'customer' AND x.result_code = '0'
        AND x.score IN ('1', '2', '3', '4', '5')
      ORDER BY x.created_at DESC, x.id DESC LIMIT 1) AS satisfaction_comment,
    (SELECT count(*) FROM satisfactions x
      WHERE x.kind = s.kind AND x.tenant = s.tenant AND x.user_id = s.user_id
        AND x.session_id = s.id AND x.source = 'robot' AND x.result_code = '0'
        AND x.score = '1') AS robot_feedback_positive,
    (SELECT count(*) FROM satisfactions x
      WHERE x.kind = s.kind AND x.tenant = s.tenant AND x.user_id = s.user_id
        AND x.session_id = s.id AND x.source = 'robot' AND x.result_code = '0'
        AND x.score = '0') AS robot_feedback_negative,
    (SELECT count(*) FROM offline_messages o
      WHERE o.kind = s.kind AND o.tenant = s.tenant AND o.user_id = s.user_id
        AND o.session_id = s.id AND o.source = 'leave_message' AND o.result_code = '0')
        AS leave_messages,
    (SELECT count(*) FROM offline_messages o
      WHERE o.kind = s.kind AND o.tenant = s.tenant AND o.user_id = s.user_id
        AND o.session_id = s.id AND o.source = 'offline') AS offline_messages,
    NULL AS robot_streams,
    NULL AS robot_stream_chars
FROM sessions s
WHERE s.kind = 'cec' AND s.state = 'closed';

-- A Tencent Desk session's events: its stored Desk.SessionEventNotify callbacks, timed by their
-- EventTime (milliseconds; the relay's receipt when absent). `body` tells a callback Tencent
-- repeated (the same body again) from another event.
CREATE VIEW tim_desk_events AS
SELECT
    c.id,
    c.app,
    json_extract(c.body, '$.SessionId') AS session_id,
    coalesce(CASE WHEN json_type(c.body, '$.ClientUserId') = 'text'
                  THEN json_extract(c.body, '$.ClientUserId') END, c.user_id) AS user_id,
    CASE WHEN json_type(c.body, '$.Event') = 'text' THEN json_extract(c.body, '$.Event') END
        AS event,
    CASE WHEN json_type(c.body, '$.EventTime') = 'integer'
              AND json_extract(c.body, '$.EventTime') BETWEEN 0 AND 253402300799999
         THEN json_extract(c.body, '$.EventTime') * 1000 ELSE c.created_at END AS at,
    CASE WHEN json_type(c.body, '$.SatisfactionSelected') = 'integer'
              AND json_extract(c.body, '$.SatisfactionSelected') BETWEEN 1 AND 5
         THEN json_extract(c.body, '$.SatisfactionSelected') END AS satisfaction,
    c.created_at,
    c.body
FROM tim_callbacks c
WHERE c.command = 'Desk.SessionEventNotify' AND json_type(c.body, '$.SessionId') = 'text';

-- The summary of every Desk session, from its events: customer messages are the events named
-- `…UserSendMsg`, robot messages `ChatBot.RobotSendMsg`, agent messages the other `…SendMsg`;
-- robot streams are the user's streams the relay sent between the session's first and last
-- callback. It opens at its SessionBegin (its first event without one).
CREATE VIEW tim_session_summaries AS
SELECT
    'tim' AS kind,
    g.app AS tenant,
    g.user_id,
    g.session_id,
    g.opened_at,
    g.closed_at,
    (g.closed_at - g.opened_at) / 1000 AS duration_ms,
    NULL AS close_reason,
    NULL AS channel_config_id,
    NULL AS locale,
    NULL AS queued,
    NULL AS queue_wait_ms,
    NULL AS max_queue_position,
    (g.first_robot - g.opened_at) / 1000 AS first_robot_answer_ms,
    (g.first_agent - g.opened_at) / 1000 AS first_agent_answer_ms,
    NULL AS agent_response_median_ms,
    g.customer_messages,
    g.robot_messages,
    g.agent_messages,
    NULL AS system_messages,
    NULL AS files_from_customer,
    NULL AS files_to_customer,
    NULL AS transfers,
    (SELECT l.satisfaction FROM tim_desk_events l
      WHERE l.app = g.app AND l.session_id = g.session_id AND l.satisfaction IS NOT NULL
      ORDER BY l.at DESC, l.id DESC LIMIT 1) AS satisfaction_evaluation,
    NULL AS satisfaction_comment,
    NULL AS robot_feedback_positive,
    NULL AS robot_feedback_negative,
    NULL AS leave_messages,
    NULL AS offline_messages,
    (SELECT count(*) FROM tim_streams t
      WHERE t.app = g.app AND t.user_id = g.user_id
        AND t.created_at BETWEEN g.first_seen AND g.last_seen) AS robot_streams,
    (SELECT coalesce(sum(length(t.text)), 0) FROM tim_streams t
      WHERE t.app = g.app AND t.user_id = g.user_id
        AND t.created_at BETWEEN g.first_seen AND g.last_seen) AS robot_stream_chars
FROM (
    SELECT
        d.app,
        d.session_id,
        coalesce(max(d.user_id), '') AS user_id,
        coalesce(min(CASE WHEN d.event = 'SessionBegin' THEN d.at END), min(d.at)) AS opened_at,
        max(d.at) AS closed_at,
        min(CASE WHEN d.event = 'ChatBot.RobotSendMsg' THEN d.at END) AS first_robot,
        min(CASE WHEN d.event GLOB '*SendMsg' AND NOT d.event GLOB '*UserSendMsg'
                  AND d.event <> 'ChatBot.RobotSendMsg' THEN d.at END) AS first_agent,
        count(DISTINCT CASE WHEN d.event GLOB '*UserSendMsg'
                            THEN d.body END) AS customer_messages,
        count(DISTINCT CASE WHEN d.event = 'ChatBot.RobotSendMsg'
                            THEN d.body END) AS robot_messages,
        count(DISTINCT CASE WHEN d.event GLOB '*SendMsg' AND NOT d.event GLOB '*UserSendMsg'
                            AND d.event <> 'ChatBot.RobotSendMsg'
                            THEN d.body END) AS agent_messages,
        min(d.created_at) AS first_seen,
        max(d.created_at) AS last_seen
    FROM tim_desk_events d
    GROUP BY d.app, d.session_id
) AS g;

-- The sessions closed before this migration.
INSERT INTO session_summaries
SELECT v.*, CAST(unixepoch('subsec') * 1000000 AS INTEGER) FROM cec_session_summaries v WHERE true;
INSERT INTO session_summaries
SELECT v.*, CAST(unixepoch('subsec') * 1000000 AS INTEGER) FROM tim_session_summaries v WHERE true;
