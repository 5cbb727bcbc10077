package state

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Locker takes a per-service file lock under Dir. The kernel drops a flock
// when its process dies, so a Ctrl-C or a crash never leaves a stale lock.
type Locker struct {
	Dir  string
	Wait time.Duration // how long to wait for another deploy; 0 fails at once
}

const lockRetry = 200 * time.Millisecond

// Lock takes the service's lock or says who holds it.
func (l Locker) Lock(ctx context.Context, service string) (func(), error) {
	if err := deploy.CheckName(service); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(l.Dir, service+".lock")
	fl := flock.New(path)
	ok, err := fl.TryLock()
	if err == nil && !ok && l.Wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, l.Wait)
		ok, err = fl.TryLockContext(wctx, lockRetry)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && wctx.Err() != nil {
			err = nil // waited the whole time: report the holder below
		}
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !ok {
		holder := strings.TrimSpace(readHolder(path + ".owner"))
		return nil, fmt.Errorf("%w: %s (%s); wait for it to finish, or pass --wait 5m", deploy.ErrLocked, service, holder)
	}
	owner := fmt.Sprintf("pid %d since %s", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	_ = os.WriteFile(path+".owner", []byte(owner), 0o644)
	return func() { _ = fl.Unlock() }, nil
}

func readHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "holder unknown"
	}
	return string(b)
}
