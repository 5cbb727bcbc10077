package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// The history label keeps the newest MaxRecords records, and fewer when they would
// pass MaxHistoryBytes of JSON. Swarm refuses a write whose service passes about
// 1 MiB ("raft: raft message is too large": on 20.10 a label of 1,044,480 bytes was
// taken, one of 1,048,576 refused), and the whole spec travels in each write and
// stays in every manager's raft log, so a quarter of that is the most kept.
const (
	MaxRecords      = 50
	MaxHistoryBytes = 256 << 10
)

// List returns service's records, newest first; a service never deployed has none.
func (s *Store) List(service string) ([]deploy.Record, error) {
	name, err := RecordName(service)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	svc, found, err := s.read(ctx, name, service)
	if err != nil || !found {
		return nil, err
	}
	recs, err := readHistory(svc.Spec.Labels)
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", service, err)
	}
	return recs, nil
}

// Save inserts or replaces rec (by ID) in its service's history. While this Store
// holds the service's lock, the save is made only while the lock holds by our clock
// (its fence) and after the lock record was read still ours: a deploy whose lock was
// given up or taken over stops at its next save, loudly.
//
// The lock and the history are two services, so no one write checks the one and
// writes the other: another could take the lock between our check and our write. It
// cannot before our fence has passed (it waits a whole lease from its first sight of
// our last renewal; we stop a third of a lease earlier), and the history's write is
// bounded by the fence and decided again on the fence at each try. What is left is a
// write sent before the fence and applied later than a third of a lease; even then
// the history's own versions keep every record, ours among the new holder's.
func (s *Store) Save(rec *deploy.Record) error {
	name, err := RecordName(rec.Service)
	if err != nil {
		return err
	}
	lockName, _ := LockName(rec.Service)
	token, _, lost := s.fence(rec.Service)
	if lost != nil {
		return lostSave(rec.Service, lost, s.lease())
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	if token != "" {
		lock, found, err := s.read(ctx, lockName, rec.Service)
		if err == nil && !found {
			err = &lostError{free: true}
		} else if err == nil {
			err = stillOurs(lock.Spec.Labels, token)
		}
		if errors.As(err, &lost) {
			s.lose(rec.Service, token, lost)
			return lostSave(rec.Service, lost, s.lease())
		}
		if err != nil {
			return fmt.Errorf("save history of %s: %w", rec.Service, err)
		}
	}
	save := func(labels map[string]string) error {
		if token != "" {
			if _, _, lost := s.fence(rec.Service); lost != nil {
				return lost
			}
		}
		recs, err := readHistory(labels)
		if err != nil {
			return fmt.Errorf("%w (remove the label with `docker service update --label-rm %s` to start a new history)", err, LabelHistory)
		}
		return writeHistory(labels, upsert(recs, rec))
	}
	for {
		if token == "" {
			err = s.modify(ctx, name, rec.Service, save)
			break
		}
		_, left, lost := s.fence(rec.Service)
		if lost != nil {
			return lostSave(rec.Service, lost, s.lease())
		}
		fctx, cancel := context.WithTimeout(ctx, left)
		err = s.modify(fctx, name, rec.Service, save)
		cancel()
		// Unanswered by the fence, which a renewal has moved since: ask on.
		if !errors.Is(err, errUnanswered) || ctx.Err() != nil {
			break
		}
	}
	if token != "" && err != nil {
		if _, _, lost := s.fence(rec.Service); lost != nil {
			return lostSave(rec.Service, lost, s.lease())
		}
	}
	if errors.As(err, &lost) {
		return lostSave(rec.Service, lost, s.lease())
	}
	if err != nil {
		return fmt.Errorf("save history of %s: %w", rec.Service, err)
	}
	return nil
}

// stillOurs fails when the lock in labels is not token's any more.
func stillOurs(labels map[string]string, token string) error {
	cur, held, err := readLease(labels)
	if err != nil {
		return err
	}
	if !held || cur.Token != token {
		return &lostError{by: cur, free: !held}
	}
	return nil
}

func lostSave(service string, how *lostError, lease time.Duration) error {
	return fmt.Errorf("%w; this deploy's record was not saved: see `handoff status` before going on", lostLock(service, how, lease))
}

// upsert puts rec in recs: in its place if there, else first; the oldest go past
// MaxRecords.
func upsert(recs []deploy.Record, rec *deploy.Record) []deploy.Record {
	if i := slices.IndexFunc(recs, func(r deploy.Record) bool { return r.ID == rec.ID }); i >= 0 {
		recs[i] = *rec
	} else {
		recs = append([]deploy.Record{*rec}, recs...)
	}
	return recs[:min(len(recs), MaxRecords)]
}

func readHistory(labels map[string]string) ([]deploy.Record, error) {
	v, ok := labels[LabelHistory]
	if !ok || v == "" {
		return nil, nil
	}
	var recs []deploy.Record
	if err := json.Unmarshal([]byte(v), &recs); err != nil {
		return nil, fmt.Errorf("the label %s is not a history handoff wrote: %w", LabelHistory, err)
	}
	return recs, nil
}

// writeHistory writes recs into labels, the oldest left out while the JSON passes
// MaxHistoryBytes; a newest record that passes it alone is refused.
func writeHistory(labels map[string]string, recs []deploy.Record) error {
	for n := len(recs); n > 0; n-- {
		b, err := json.Marshal(recs[:n])
		if err != nil {
			return err
		}
		if len(b) <= MaxHistoryBytes {
			labels[LabelHistory] = string(b)
			return nil
		}
	}
	return fmt.Errorf("record %s is more than %d bytes of JSON, the most a record service keeps", recs[0].ID, MaxHistoryBytes)
}
