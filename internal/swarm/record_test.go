package swarm

import (
	"context"
	"errors"
	"testing"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestRecordName(t *testing.T) {
	for service, want := range map[string]string{
		"web":      "handoff-record-web",
		"api_v2":   "handoff-record-api_v2",
		"shop.web": "handoff-record-shop-web-",
		"shop-web": "handoff-record-shop-web",
		"web-":     "handoff-record-web-",
		"a234567890123456789012345678901234567890123456789": "handoff-record-a23456789012345678901234567890123456789-",
	} {
		got, err := RecordName(service)
		require.NoError(t, err)
		require.LessOrEqual(t, len(got), 63, service)
		require.Regexp(t, swarmName, got, service)
		require.Contains(t, got, want, service)
	}
	dotted, _ := RecordName("shop.web")
	dashed, _ := RecordName("shop-web")
	require.NotEqual(t, dotted, dashed)
	_, err := RecordName("../x")
	require.ErrorIs(t, err, deploy.ErrConfig)
}

func TestRecordServiceRunsNothing(t *testing.T) {
	api := newFakeSwarm()
	s := testStore(api, newFakeClock(), "a")
	require.NoError(t, s.Save(&deploy.Record{ID: "1", Service: "web"}))
	svc := api.services["handoff-record-web"]
	require.Equal(t, uint64(0), *svc.Spec.Mode.Replicated.Replicas)
	require.Equal(t, "web", svc.Spec.Labels[LabelRecord])
}

func TestRecordOfAnotherServiceIsRefused(t *testing.T) {
	api := newFakeSwarm()
	s := testStore(api, newFakeClock(), "a")
	for _, name := range []string{"handoff-record-web", "handoff-lock-web"} {
		spec := recordSpec(name, "web")
		spec.Labels = map[string]string{"someone": "else"}
		_, err := api.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
		require.NoError(t, err)
	}
	err := s.Save(&deploy.Record{ID: "1", Service: "web"})
	require.ErrorContains(t, err, "read record handoff-record-web: that service is not handoff's record of web")
	_, err = s.Lock(context.Background(), "web")
	require.ErrorContains(t, err, "read record handoff-lock-web: that service is not handoff's record of web")
}

func TestRecordAskedAgainWhileTheSwarmHasNoLeader(t *testing.T) {
	api := newFakeSwarm()
	s := testStore(api, newFakeClock(), "a")
	require.NoError(t, s.Save(&deploy.Record{ID: "1", Service: "web"}))
	// The read, then the write, then the read again fail: an election.
	api.unavailable = 3
	require.NoError(t, s.Save(&deploy.Record{ID: "2", Service: "web"}))
	require.Zero(t, api.unavailable)
	recs, err := s.List("web")
	require.NoError(t, err)
	require.Equal(t, []string{"2", "1"}, ids(recs))
}

func TestRecordWriteRefusedForAnotherReasonFails(t *testing.T) {
	api := newFakeSwarm()
	s := testStore(api, newFakeClock(), "a")
	require.NoError(t, s.Save(&deploy.Record{ID: "1", Service: "web"}))
	api.refuse = errors.New("Error response from daemon: rpc error: code = Unknown desc = raft: raft message is too large and can't be sent")
	err := s.modify(context.Background(), "handoff-record-web", "web", func(labels map[string]string) error {
		labels["x"] = "y"
		return nil
	})
	require.ErrorContains(t, err, "write record handoff-record-web: Error response from daemon: rpc error: code = Unknown desc = raft: raft message is too large")
}
