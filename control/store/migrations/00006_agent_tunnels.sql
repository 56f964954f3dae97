-- +goose Up
-- Where each cluster's agent tunnel is, for gatehouse status: the node that
-- holds it, what the agent said of itself when it connected, and when the
-- node last saw the tunnel alive. session tells one connection from the
-- next on the same node. Nodes write it on connect, every 30 s and on
-- disconnect; a row whose heartbeat is old is a tunnel that is gone.
CREATE TABLE agent_tunnels (
    cluster_id    TEXT PRIMARY KEY REFERENCES clusters (id) ON DELETE CASCADE,
    node          TEXT NOT NULL,
    session       TEXT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '',
    kube_version  TEXT NOT NULL DEFAULT '',
    connected_us  BIGINT NOT NULL,
    heartbeat_us  BIGINT NOT NULL
);
