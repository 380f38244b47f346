package policy

import (
	"fmt"
	"sort"
	"strings"
)

// ByName returns a built-in policy: fcfs, easy, entropy, consolidate, ss
// (selective suspension) or ferry.
func ByName(name string) (Policy, error) {
	switch strings.ToLower(name) {
	case "fcfs":
		return FCFS{}, nil
	case "easy":
		return EASY{}, nil
	case "entropy":
		return Entropy{}, nil
	case "consolidate":
		return Consolidate{}, nil
	case "ss":
		return Selective{Factor: 2}, nil
	case "ferry":
		return Ferry(), nil
	}
	return nil, fmt.Errorf("unknown policy %q (have %s)", name, strings.Join(Names(), ", "))
}

// Names lists the built-in policies.
func Names() []string {
	n := []string{"fcfs", "easy", "entropy", "consolidate", "ss", "ferry"}
	sort.Strings(n)
	return n
}
