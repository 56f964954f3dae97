// Package apitypes holds the wire types of Gatehouse's REST API (/api/v1):
// what the server (control/api) answers and the client
// (control/apiclient, the CLI) reads. It is a leaf package so that the
// client does not link the server.
package apitypes

import (
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
)

// Whoami is the caller as the API sees them.
type Whoami struct {
	ID    string `json:"id"`
	Email string `json:"email"`
	Org   string `json:"org"`
}

// Project is the API's project.
type Project struct {
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Version     int64     `json:"version,omitempty"`
	Created     time.Time `json:"created,omitzero"`
}

// Cluster is the API's cluster.
type Cluster struct {
	Name        string `json:"name"`
	Project     string `json:"project"`
	Description string `json:"description,omitempty"`
	// SessionRecording names the roles whose holders' exec and attach
	// sessions on the cluster are recorded: "*" for everyone, built-in
	// roles ("cluster-admin", "admin", "edit", "view") or custom roles'
	// names. Empty records no one.
	SessionRecording []string `json:"sessionRecording,omitempty"`
	// Registered says whether an agent has registered (its fingerprint is
	// known).
	Registered bool      `json:"registered"`
	Version    int64     `json:"version,omitempty"`
	Created    time.Time `json:"created,omitzero"`
}

// Bootstrap is what a new cluster needs: the one-time token and the
// manifest that carries it.
type Bootstrap struct {
	Token    string    `json:"token"`
	Expires  time.Time `json:"expires"`
	Manifest string    `json:"manifest"`
}

// ClusterCreated answers POST /api/v1/clusters.
type ClusterCreated struct {
	Cluster   Cluster   `json:"cluster"`
	Bootstrap Bootstrap `json:"bootstrap"`
}

// User is the API's person.
type User struct {
	ID    string `json:"id,omitempty"`
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
	// CertTTL overrides the organization's certificate lifetime ("4h").
	CertTTL string `json:"certTTL,omitempty"`
	Linked  bool   `json:"linked"`
	// Password, on creation only, makes the person a local account in
	// Kratos with this first password; without it the person is linked
	// at their first (SSO) login.
	Password  string    `json:"password,omitempty"`
	Version   int64     `json:"version,omitempty"`
	Created   time.Time `json:"created,omitzero"`
	LastLogin time.Time `json:"lastLogin,omitzero"`
}

// InvitationRequest asks for an invitation.
type InvitationRequest struct {
	// TTL is how long the invitation lasts ("24h", the default; at most
	// MaxInvitationTTL).
	TTL string `json:"ttl,omitempty"`
}

// InvitationResult is an invitation: the one string with which the person
// sets the first password of their local account (`gatehouse login
// --invitation`). It is shown once; Kratos keeps only its hash.
type InvitationResult struct {
	Invitation string    `json:"invitation"`
	Expires    time.Time `json:"expires"`
}

// Group is the API's group.
type Group struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// IdPGroups are identity-provider groups whose members belong here
	// (synced at every login).
	IdPGroups []string `json:"idpGroups,omitempty"`
	// Members are people's ids (local members).
	Members []string `json:"members,omitempty"`
}

// Subject names who a binding is for: a person (id or email) or a group
// (name).
type Subject struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// RoleBinding is the API's role binding.
type RoleBinding struct {
	ID        string    `json:"id,omitempty"`
	Subject   Subject   `json:"subject"`
	Role      string    `json:"role"`
	Project   string    `json:"project,omitempty"`
	Namespace string    `json:"namespace,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
	CreatedBy string    `json:"createdBy,omitempty"`
}

// RoleInfo describes a role: built-in (actions, kube) or custom (rules).
type RoleInfo struct {
	Name        string              `json:"name"`
	Scope       string              `json:"scope"`
	Actions     []string            `json:"actions,omitempty"`
	Kube        string              `json:"kube,omitempty"`
	Builtin     bool                `json:"builtin"`
	Rules       []rbacv1.PolicyRule `json:"rules,omitempty"`
	Description string              `json:"description,omitempty"`
}

// Token is an API token of the caller's. Secret is present once, in the
// answer to its creation.
type Token struct {
	ID       string    `json:"id,omitempty"`
	Name     string    `json:"name"`
	TTL      string    `json:"ttl,omitempty"`
	Roles    []string  `json:"roles,omitempty"`
	Secret   string    `json:"secret,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
	LastUsed time.Time `json:"lastUsed,omitzero"`
	Revoked  bool      `json:"revoked,omitempty"`
}

// List is a page of a list response.
type List[T any] struct {
	Items    []T    `json:"items"`
	Continue string `json:"continue,omitempty"`
}

// LoginResult answers POST /api/v1/login.
type LoginResult struct {
	Whoami
	// Groups are the Gatehouse groups the person is in after this login.
	Groups []string `json:"groups"`
	// Warning is set when the login succeeded but the person's groups at
	// their SSO provider could not be read.
	Warning string `json:"warning,omitempty"`
	// TrustBundle is the gateway's trust bundle (PEM roots): during a
	// rotation of its root, the old root and the new. Kubeconfigs should
	// carry it.
	TrustBundle string `json:"trustBundle,omitempty"`
}

// CredentialRequest asks for a client certificate for a key the person
// generated (the private key never leaves their machine).
type CredentialRequest struct {
	CSR string `json:"csr"`
	// TTL is the lifetime asked for ("8h"); empty means the default for
	// the person. It may not exceed the organization's maximum.
	TTL string `json:"ttl,omitempty"`
}

// Credential is a client certificate for kubectl.
type Credential struct {
	// Certificate is the chain (leaf, then the users intermediate), PEM.
	Certificate string    `json:"certificate"`
	Expires     time.Time `json:"expires"`
	Serial      string    `json:"serial"`
}

// RevocationRequest revokes one certificate (Serial) or everything a
// person holds (User: id or email).
type RevocationRequest struct {
	User   string `json:"user,omitempty"`
	Serial string `json:"serial,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Status answers GET /api/v1/status: the gateway cluster and where each of
// the organization's clusters is served.
type Status struct {
	// Node is the node that answered.
	Node     string          `json:"node"`
	Members  []Member        `json:"members"`
	Clusters []ClusterStatus `json:"clusters"`
	// CA is the certificate authority's generations that the answering
	// node trusts, oldest first: more than one while a rotation is under
	// way.
	CA []CAGeneration `json:"ca,omitempty"`
}

// CAGeneration is one generation of the certificate authority's keys.
type CAGeneration struct {
	Number int64 `json:"number"`
	// Phase is standby (trusted everywhere, signing nothing yet), active
	// (signing), retiring (trusted until RetireAfter) or sunset (trusted
	// while the nodes move their serving certificates off it).
	Phase string `json:"phase"`
	// NewRoot: the generation has a root of its own (a root rotation).
	NewRoot bool      `json:"newRoot,omitempty"`
	Created time.Time `json:"created"`
	// RootFingerprint is the SHA-256 of its root certificate, hex.
	RootFingerprint string     `json:"rootFingerprint"`
	RetireAfter     *time.Time `json:"retireAfter,omitempty"`
	// Overlap is how long the generation before stays trusted once this
	// one is active.
	Overlap string `json:"overlap,omitempty"`
	// Waiting names the nodes a phase waits for: those that do not trust
	// a standby generation yet (it becomes active once none is left), or
	// those still serving under a generation at sunset (it is retired
	// once none is left).
	Waiting []string `json:"waiting,omitempty"`
}

// Member is a gateway node, as the answering node sees it.
type Member struct {
	Name       string `json:"name"`
	PublicAddr string `json:"publicAddr,omitempty"`
	PeerAddr   string `json:"peerAddr,omitempty"`
	Zone       string `json:"zone,omitempty"`
	Tunnels    int    `json:"tunnels"`
	Draining   bool   `json:"draining,omitempty"`
	// Generation tells a restarted node from its previous life.
	Generation int64 `json:"generation,omitempty"`
	// Raft is its place in the Raft group that elects the certificate
	// authority's leader: leader, voter or non-voter ("" outside it).
	Raft string `json:"raft,omitempty"`
}

// ClusterStatus is one cluster's health: which node should hold its
// tunnel, whether its agent is connected and where, and what the agent
// said of itself.
type ClusterStatus struct {
	Name    string `json:"name"`
	Project string `json:"project"`
	// Owner is the node that should hold the tunnel.
	Owner string `json:"owner,omitempty"`
	// Connected: a node holds the tunnel and saw it alive within the last
	// 90 s.
	Connected bool `json:"connected"`
	// Node holds the tunnel.
	Node          string    `json:"node,omitempty"`
	AgentVersion  string    `json:"agentVersion,omitempty"`
	KubeVersion   string    `json:"kubeVersion,omitempty"`
	Since         time.Time `json:"since,omitzero"`
	LastHeartbeat time.Time `json:"lastHeartbeat,omitzero"`
}
