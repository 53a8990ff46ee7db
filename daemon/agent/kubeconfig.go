package agent

import (
	"context"
	"time"

	"github.com/warpnet/warpnet/internal/kubeconfig"
)

// DefaultTokenCheck is how often warp-ipam's kubeconfig is compared with
// the service account token: the kubelet rotates the token at 80% of its
// lifetime (an hour at the least), so a minute is plenty.
const DefaultTokenCheck = time.Minute

// refreshIPAMToken keeps the token in warp-ipam's kubeconfig the pod's
// current one until ctx ends (see internal/kubeconfig).
func (a *Agent) refreshIPAMToken(ctx context.Context) {
	every := a.cfg.TokenCheck
	if every <= 0 {
		every = DefaultTokenCheck
	}
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		changed, err := kubeconfig.RefreshToken(a.cfg.IPAMKubeconfig, a.cfg.ServiceAccountDir)
		switch {
		case err != nil && !failing:
			a.log.Error("cannot keep warp-ipam's kubeconfig token current; its API calls fail once the token expires",
				"kubeconfig", a.cfg.IPAMKubeconfig, "err", err)
		case err == nil && changed:
			a.log.Info("warp-ipam's kubeconfig has the rotated service account token", "kubeconfig", a.cfg.IPAMKubeconfig)
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
