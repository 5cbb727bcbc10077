package docker

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// LabelJob marks a release job's one-off container with its service.
const LabelJob = "handoff.job"

// Job runs cmd once in a one-off container of imageID: the service's
// entrypoint, environment, volumes, networks and limits, nothing
// published, no restart, no network alias (nobody can send it a request).
// Its output streams to out as it comes; the container is removed once it
// has exited. When ctx ends first the job is stopped (its stop signal,
// then SIGKILL after the grace period) and removed.
//
// A job a killed handoff left running is never run beside: Job refuses,
// naming it; one that has exited is removed.
func (r *Runtime) Job(ctx context.Context, svc deploy.Service, imageID string, cmd []string, out io.Writer) (int, error) {
	prefix := svc.ContainerPrefix
	if prefix == "" {
		prefix = svc.Name
	}
	name := prefix + "-release-job"
	if err := r.clearJobs(ctx, svc.Name); err != nil {
		return -1, err
	}
	cfg, host, netCfg := r.spec(ctx, svc, imageID)
	cfg.Cmd = cmd
	cfg.Labels = map[string]string{LabelJob: svc.Name, LabelImageID: imageID}
	cfg.Healthcheck = &container.HealthConfig{Test: []string{"NONE"}}
	host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyDisabled}
	id, err := r.createVerified(ctx, svc, name, imageID, cfg, host, netCfg)
	if err != nil {
		return -1, err
	}
	defer func() {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = r.api.ContainerRemove(rmCtx, id, client.ContainerRemoveOptions{Force: true})
	}()

	att, err := r.api.ContainerAttach(ctx, id, client.ContainerAttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		return -1, fmt.Errorf("attach to %s: %w", name, err)
	}
	defer att.Close()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = stdcopy.StdCopy(out, out, att.Reader)
	}()
	if _, err := r.api.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return -1, fmt.Errorf("start %s: %w", name, err)
	}
	wait := r.api.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case res := <-wait.Result:
		<-copied // the last lines it wrote come before the verdict
		if res.Error != nil && res.Error.Message != "" {
			return int(res.StatusCode), fmt.Errorf("%s: %s", name, res.Error.Message)
		}
		return int(res.StatusCode), nil
	case err := <-wait.Error:
		if ctx.Err() == nil {
			return -1, fmt.Errorf("wait for %s: %w", name, err)
		}
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), svc.StopTimeout+30*time.Second)
	defer cancel()
	secs := int(svc.StopTimeout.Seconds())
	_, _ = r.api.ContainerStop(stopCtx, id, client.ContainerStopOptions{Timeout: &secs})
	return -1, fmt.Errorf("%s stopped: %w", name, ctx.Err())
}

// clearJobs removes release jobs of service that have exited, and refuses
// to start another while one still runs.
func (r *Runtime) clearJobs(ctx context.Context, service string) error {
	list, err := r.api.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelJob+"="+service),
	})
	if err != nil {
		return fmt.Errorf("list release jobs of %s: %w", service, err)
	}
	for _, c := range list.Items {
		name := c.ID[:12]
		if len(c.Names) > 0 {
			name = c.Names[0][1:]
		}
		if c.State == container.StateRunning || c.State == container.StateRestarting || c.State == container.StatePaused {
			return fmt.Errorf("%w: a release job of %s is still running (%s, left by a deploy that was killed?): wait for it to end (`docker wait %s`) or stop it (`docker rm -f %s`), then deploy again", deploy.ErrReleaseJob, service, name, name, name)
		}
		if _, err := r.api.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			return fmt.Errorf("remove the old release job %s: %w", name, err)
		}
	}
	return nil
}
