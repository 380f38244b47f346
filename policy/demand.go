package policy

// Observing is implemented by policies that size tasks by their observed
// demand (what they use now) rather than their peak reservation. The
// simulator and the controller fill Task.Demand accordingly; a policy that
// does not implement it sees peak demands.
type Observing interface {
	ObservesDemand() bool
}

// ObservesDemand reports whether p sizes tasks by their observed demand.
func ObservesDemand(p Policy) bool {
	o, ok := p.(Observing)
	return ok && o.ObservesDemand()
}
