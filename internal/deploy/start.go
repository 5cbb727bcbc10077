package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// start runs every container of a new release, all at once. When one
// cannot start, those that did are removed: a release is started whole or
// not at all.
func (d *Deployer) start(ctx context.Context, svc Service, release int, imageID string) (*Release, error) {
	replicas := svc.ReplicaNumbers()
	started := make([]Container, len(replicas))
	errs := make([]error, len(replicas))
	var wg sync.WaitGroup
	for i, replica := range replicas {
		wg.Go(func() { started[i], errs[i] = d.Runtime.Run(ctx, svc, release, replica, imageID) })
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		return releaseOf(svc.ReleaseName(release), started...), nil
	}
	var removed []string
	for i, c := range started {
		if errs[i] == nil {
			d.discard(ctx, c)
			removed = append(removed, c.Name)
		}
	}
	if len(removed) > 0 {
		err = fmt.Errorf("%w (%s, which did start, removed)", err, strings.Join(removed, ", "))
	}
	return nil, err
}

// startDetail names what the start phase starts: web-4, or web-4 (3 replicas).
func (d *Deployer) startDetail(svc Service, release int) string {
	if n := len(svc.ReplicaNumbers()); n > 1 {
		return fmt.Sprintf("%s (%d replicas)", svc.ReleaseName(release), n)
	}
	return svc.ReleaseName(release)
}

// startAgain starts a kept release's containers (those not running). When
// one cannot start, those started here are stopped again.
func (d *Deployer) startAgain(ctx context.Context, svc Service, rel *Release) (*Release, error) {
	out := *rel
	out.Containers = slices.Clone(rel.Containers)
	var started []Container
	for i, c := range out.Containers {
		if c.Running {
			continue
		}
		now, err := d.Runtime.Start(ctx, c.ID, svc.Restart)
		if err != nil {
			err = fmt.Errorf("start %s: %w", c.Name, err)
			for _, s := range started {
				d.stopQuietly(svc)(ctx, s)
			}
			if len(started) > 0 {
				err = fmt.Errorf("%w (%s, started before it, stopped again)", err, strings.Join(names(started), ", "))
			}
			return nil, err
		}
		now.Replica, now.Adopted = c.Replica, c.Adopted
		out.Containers[i] = now
		started = append(started, now)
	}
	return &out, nil
}
