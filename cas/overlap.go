package cas

// Overlap is what sending B costs when the destination already holds A's
// chunks (the seed's "hot" and "cold" blocks).
type Overlap struct {
	// NonZero is B's data bytes (holes excluded); Hot those of them whose
	// chunk is in A; Cold the bytes of B's distinct chunks not in A, which
	// is what crosses the wire besides the index.
	NonZero, Hot, Cold, Holes int64
	// IndexBytes is the encoded size of B's index.
	IndexBytes int64
}

// HotFraction is Hot / NonZero (0 when B is all zeros).
func (o Overlap) HotFraction() float64 {
	if o.NonZero == 0 {
		return 0
	}
	return float64(o.Hot) / float64(o.NonZero)
}

// Sent is the bytes a transfer of B moves: cold chunks plus the index.
func (o Overlap) Sent() int64 { return o.Cold + o.IndexBytes }

// Compare computes the overlap of b with a (a is at the destination).
func Compare(a, b *Index) Overlap {
	have := make(map[ID]bool, len(a.Entries))
	for _, e := range a.Entries {
		if !e.Hole {
			have[e.ID] = true
		}
	}
	o := Overlap{IndexBytes: b.EncodedLen()}
	sent := map[ID]bool{}
	for _, e := range b.Entries {
		switch {
		case e.Hole:
			o.Holes += int64(e.Length)
		case have[e.ID]:
			o.NonZero += int64(e.Length)
			o.Hot += int64(e.Length)
		default:
			o.NonZero += int64(e.Length)
			if !sent[e.ID] {
				sent[e.ID] = true
				o.Cold += int64(e.Length)
			}
		}
	}
	return o
}
