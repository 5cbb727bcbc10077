package swarm

import (
	"context"
	"fmt"
	"strconv"
)

// LabelGeneration is the last switch generation given out for a service, on its lock
// record: every node's proxy refuses a switch at or below the one it holds, so each
// switch, from any manager, takes the next.
const LabelGeneration = "handoff.generation"

// NextGeneration takes the next switch generation of service: the counter on its lock
// record, written at the version read, so two managers never get the same one. A
// write whose answer was lost may have taken one: the next is then one further, which
// only leaves a gap.
func (s *Store) NextGeneration(ctx context.Context, service string) (uint64, error) {
	name, err := LockName(service)
	if err != nil {
		return 0, err
	}
	var next uint64
	err = s.bounded(ctx, func(ctx context.Context) error {
		return s.modify(ctx, name, service, func(labels map[string]string) error {
			cur := uint64(0)
			if v, ok := labels[LabelGeneration]; ok {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return fmt.Errorf("record %s: %s=%q is not a number; remove the label", name, LabelGeneration, v)
				}
				cur = n
			}
			next = cur + 1
			labels[LabelGeneration] = strconv.FormatUint(next, 10)
			return nil
		})
	})
	return next, err
}
