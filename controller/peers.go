package controller

import "github.com/ferrycluster/ferry/store"

// failureDomainLabels are the node labels that name a failure domain, in
// order of preference: a checkpoint peer is chosen outside the task's
// domain when a node outside it is available.
var failureDomainLabels = []string{"failure-domain", "zone", "rack"}

// wantsPeer says whether an action placing t needs a checkpoint peer: a
// process task whose job takes periodic checkpoints.
func wantsPeer(t *store.Task, spec *JobSpec, kind string) bool {
	switch kind {
	case "boot", "resume", "migrate":
	default:
		return false
	}
	return t.Driver == "process" && spec != nil && spec.Checkpoint.Interval > 0
}

// peerChooser picks checkpoint peers: an online node other than the task's,
// outside its failure domain when possible, the one keeping the fewest
// running tasks' replicas (counting the choices made so far), then by name.
type peerChooser struct {
	s    *store.State
	load map[string]int
}

func newPeerChooser(s *store.State) *peerChooser {
	pc := &peerChooser{s: s, load: map[string]int{}}
	for _, t := range s.Tasks {
		if t.CheckpointPeer != "" && t.Phase == store.TaskRunning {
			pc.load[t.CheckpointPeer]++
		}
	}
	return pc
}

// choose returns the peer for a task placed on node to ("" when no other
// node is online).
func (pc *peerChooser) choose(to string) string {
	dst := pc.s.Nodes[to]
	sameDomain := func(n *store.Node) bool {
		if dst == nil {
			return false
		}
		for _, k := range failureDomainLabels {
			if v, ok := dst.Labels[k]; ok {
				return n.Labels[k] == v
			}
		}
		return false
	}
	best, bestOut := "", false
	for _, name := range pc.s.SortedNodes() {
		n := pc.s.Nodes[name]
		if name == to || n.Status != store.NodeOnline || n.Addr == "" {
			continue
		}
		out := !sameDomain(n)
		if best == "" || out && !bestOut || out == bestOut && pc.load[name] < pc.load[best] {
			best, bestOut = name, out
		}
	}
	if best != "" {
		pc.load[best]++
	}
	return best
}
