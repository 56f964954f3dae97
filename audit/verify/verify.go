// Package verify checks an audit stream's hash chains and signed
// checkpoints (issue 12): given the events as written (a Kafka topic read
// partition by partition, or an export), it reports for each node's chain
// the events missing (a deletion), altered (an edit), out of order (a
// reordering), a chain cut short before its last checkpoint, a chain
// deleted whole or cut short that the node's next chain links to
// (audit.chain.start), and any checkpoint whose signature does not verify
// against the CA; and, as a warning, a chain whose last events no
// checkpoint signs.
package verify

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"

	"github.com/gatehouse-dev/gatehouse/audit"
)

// Kinds of problem.
const (
	Missing   = "missing"   // events of a chain are absent: deleted
	Altered   = "altered"   // an event is not what the next one's hash names: edited
	Reordered = "reordered" // an event came after a later one of its chain
	BadSig    = "bad-signature"
	// Unsigned (a warning): the chain's last events come after its last
	// checkpoint. A node that crashed leaves such a tail; so does a
	// deletion of a chain's last events with their checkpoint. It is at
	// most a checkpoint interval long.
	Unsigned   = "unsigned-tail"
	Unreadable = "unreadable" // not an event
	Conflict   = "conflict"   // two different events under one place in a chain
)

// Problem is one finding, in one node's chain, over a range of its events.
type Problem struct {
	Kind, Node, Chain string
	From, To          uint64
	Detail            string
}

func (p Problem) String() string {
	where := fmt.Sprintf("events %d-%d", p.From, p.To)
	if p.From == p.To {
		where = fmt.Sprintf("event %d", p.From)
	}
	return fmt.Sprintf("%s: node %s, chain %s, %s: %s", p.Kind, p.Node, p.Chain, where, p.Detail)
}

// Chain sums up one chain.
type Chain struct {
	Node, Chain string
	// First and Last are the sequence numbers seen; Events how many
	// distinct; Checkpoints how many verified.
	First, Last         uint64
	Events, Checkpoints int
}

// Report is what Verify found.
type Report struct {
	Chains   []Chain
	Problems []Problem
	// Warnings are unsigned tails (Unsigned).
	Warnings []Problem
	// Events is how many were read, Duplicates how many were the same
	// event again (at-least-once delivery; not a problem).
	Events, Duplicates int
	// Unchained counts events without a chain (written before chains).
	Unchained int
}

// OK reports whether nothing was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

type entry struct {
	raw  []byte
	hash string
	ev   audit.Event
}

type chainState struct {
	node, id string
	bySeq    map[uint64]*entry
	cps      []*entry
}

// link is a chain's claim that another of its node's came before it.
type link struct {
	node, chain string // the chain that makes the claim
	to          audit.ChainLink
}

// Stream checks events as they came, in order within each stream (a
// Kafka partition or an export file): call Add for each stream's events
// in their order, then Report. Events of one chain can be spread over
// several streams (a node's events are keyed by cluster); order is
// checked within each stream.
type Stream struct {
	roots  *x509.CertPool
	chains map[string]*chainState
	r      Report
	order  map[string]uint64 // stream/chain -> highest sequence number met
	links  []link
}

// New returns a checker that verifies checkpoints against roots (the
// gateway's trust bundle).
func New(roots *x509.CertPool) *Stream {
	return &Stream{roots: roots, chains: map[string]*chainState{}, order: map[string]uint64{}}
}

// Add takes the next event of stream (a name: the partition, the file).
func (s *Stream) Add(stream string, raw []byte) {
	s.r.Events++
	var ev audit.Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		s.r.Problems = append(s.r.Problems, Problem{Kind: Unreadable, Detail: fmt.Sprintf("in %s: %v", stream, err)})
		return
	}
	if ev.Chain == "" || ev.ChainSeq == 0 {
		s.r.Unchained++
		return
	}
	sum := sha256.Sum256(raw)
	e := &entry{raw: raw, hash: hex.EncodeToString(sum[:]), ev: ev}
	key := ev.Node + "/" + ev.Chain
	c := s.chains[key]
	if c == nil {
		c = &chainState{node: ev.Node, id: ev.Chain, bySeq: map[uint64]*entry{}}
		s.chains[key] = c
	}
	if old, ok := c.bySeq[ev.ChainSeq]; ok {
		if old.hash == e.hash {
			s.r.Duplicates++
			return
		}
		s.r.Problems = append(s.r.Problems, Problem{Kind: Conflict, Node: ev.Node, Chain: ev.Chain, From: ev.ChainSeq, To: ev.ChainSeq,
			Detail: "two different events at this place: one of them was edited"})
		return
	}
	c.bySeq[ev.ChainSeq] = e
	okey := stream + "\x00" + key
	if last := s.order[okey]; ev.ChainSeq < last {
		s.r.Problems = append(s.r.Problems, Problem{Kind: Reordered, Node: ev.Node, Chain: ev.Chain, From: ev.ChainSeq, To: last,
			Detail: fmt.Sprintf("in %s, event %d came after event %d", stream, ev.ChainSeq, last)})
	} else {
		s.order[okey] = ev.ChainSeq
	}
	if ev.Action == audit.ActionCheckpoint && ev.Checkpoint != nil {
		c.cps = append(c.cps, e)
	}
	if ev.Action == audit.ActionChainStart && ev.Link != nil && ev.Link.Chain != ev.Chain {
		s.links = append(s.links, link{node: ev.Node, chain: ev.Chain, to: *ev.Link})
	}
}

// Report checks the chains and returns what was found.
func (s *Stream) Report() Report {
	r := s.r
	r.Problems = slices.Clone(s.r.Problems) // Report may be asked again
	keys := make([]string, 0, len(s.chains))
	for k := range s.chains {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		c := s.chains[k]
		seqs := make([]uint64, 0, len(c.bySeq))
		for q := range c.bySeq {
			seqs = append(seqs, q)
		}
		slices.Sort(seqs)
		sum := Chain{Node: c.node, Chain: c.id, First: seqs[0], Last: seqs[len(seqs)-1], Events: len(seqs)}
		add := func(kind string, from, to uint64, detail string) {
			r.Problems = append(r.Problems, Problem{Kind: kind, Node: c.node, Chain: c.id, From: from, To: to, Detail: detail})
		}
		if seqs[0] != 1 {
			add(Missing, 1, seqs[0]-1, "the chain's first events are absent")
		} else if c.bySeq[1].ev.Prev != "" {
			add(Altered, 1, 1, "the chain's first event names a previous one")
		}
		for i := 1; i < len(seqs); i++ {
			a, b := seqs[i-1], seqs[i]
			if b != a+1 {
				add(Missing, a+1, b-1, "absent between the events around them")
				continue
			}
			if c.bySeq[b].ev.Prev != c.bySeq[a].hash {
				add(Altered, a, b, fmt.Sprintf("event %d's hash is not the one event %d names: one of them was edited", a, b))
			}
		}
		for _, cp := range c.cps {
			p := cp.ev.Checkpoint
			if err := s.checkSignature(c, cp); err != nil {
				add(BadSig, cp.ev.ChainSeq, cp.ev.ChainSeq, err.Error())
				continue
			}
			signed, ok := c.bySeq[p.UpTo]
			switch {
			case !ok:
				// reported as missing above
			case signed.hash != p.Hash:
				add(Altered, p.UpTo, p.UpTo, fmt.Sprintf("checkpoint %d signed another event here", cp.ev.ChainSeq))
			default:
				sum.Checkpoints++
			}
		}
		signedTo := uint64(0)
		for _, cp := range c.cps {
			signedTo = max(signedTo, cp.ev.ChainSeq)
		}
		if signedTo < sum.Last {
			r.Warnings = append(r.Warnings, Problem{Kind: Unsigned, Node: c.node, Chain: c.id, From: signedTo + 1, To: sum.Last,
				Detail: "no checkpoint signs the chain's last events: the node stopped without one (a crash), or events after them were deleted with their checkpoint"})
		}
		r.Chains = append(r.Chains, sum)
	}
	// A chain that a later one links to must be here, up to the event
	// linked to, and as linked.
	for _, l := range s.links {
		c := s.chains[l.node+"/"+l.to.Chain]
		add := func(kind string, from, to uint64, detail string) {
			r.Problems = append(r.Problems, Problem{Kind: kind, Node: l.node, Chain: l.to.Chain, From: from, To: to,
				Detail: detail + fmt.Sprintf(" (chain %s, which followed it, names its event %d)", l.chain, l.to.Seq)})
		}
		if c == nil {
			add(Missing, 1, l.to.Seq, "the whole chain is absent")
			continue
		}
		last := uint64(0)
		for q := range c.bySeq {
			last = max(last, q)
		}
		e, ok := c.bySeq[l.to.Seq]
		switch {
		case last < l.to.Seq:
			add(Missing, last+1, l.to.Seq, "the chain's last events are absent")
		case ok && e.hash != l.to.Hash:
			add(Altered, l.to.Seq, l.to.Seq, "the event is not the one linked to")
		}
	}
	return r
}

// checkSignature verifies a checkpoint: its certificate chains to the
// roots as a node's, names the node, and signed the digest.
func (s *Stream) checkSignature(c *chainState, cp *entry) error {
	p := cp.ev.Checkpoint
	var certs []*x509.Certificate
	for rest := []byte(p.Certificate); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return fmt.Errorf("the checkpoint's certificate: %v", err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return fmt.Errorf("the checkpoint carries no certificate")
	}
	inter := x509.NewCertPool()
	for _, cert := range certs[1:] {
		inter.AddCert(cert)
	}
	// Only the nodes intermediate issues certificates for serving: a
	// person's or an agent's does not verify.
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, CurrentTime: cp.ev.Time,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("the checkpoint's certificate does not verify: %v", err)
	}
	pub, ok := certs[0].PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("the checkpoint's key is not ECDSA")
	}
	sig, err := base64.StdEncoding.DecodeString(p.Signature)
	if err != nil || !ecdsa.VerifyASN1(pub, audit.CheckpointDigest(c.node, c.id, p.UpTo, p.Hash), sig) {
		return fmt.Errorf("the checkpoint's signature does not verify")
	}
	return nil
}
