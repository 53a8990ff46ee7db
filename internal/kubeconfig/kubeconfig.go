// Package kubeconfig writes the kubeconfig that warp-ipam, a process on the
// host, uses to reach the API server with warpnet's service account, and
// keeps its token current.
//
// The token is the pod's projected service account token: the kubelet
// rotates that file before the token expires (after an hour when the API
// server does not extend legacy tokens), so a copy taken once by the
// installer would stop working. warpd, which runs in the same pod for as
// long as the node does, copies each new token into the kubeconfig
// (RefreshToken).
package kubeconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/warpnet/warpnet/internal/atomicfile"
)

// DefaultServiceAccountDir is where a pod's service account is mounted.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Mode of the kubeconfig: it holds a credential.
const Mode = 0o600

// FromServiceAccount builds a kubeconfig from a pod's service account
// directory (token, ca.crt). server "" means the in-cluster address
// (KUBERNETES_SERVICE_HOST/PORT).
func FromServiceAccount(saDir, server string) ([]byte, error) {
	token, err := readToken(saDir)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(saDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("service account CA: %w", err)
	}
	if server == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return nil, errors.New("KUBERNETES_SERVICE_HOST/PORT are not set: pass --kube-server")
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		server = "https://" + host + ":" + port
	}
	// JSON is YAML: no quoting questions for the token or CA.
	return encode(map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "warpnet",
		"clusters": []any{map[string]any{"name": "local", "cluster": map[string]any{
			"server": server, "certificate-authority-data": ca}}},
		"users": []any{map[string]any{"name": "warpnet", "user": map[string]any{"token": token}}},
		"contexts": []any{map[string]any{"name": "warpnet", "context": map[string]any{
			"cluster": "local", "user": "warpnet"}}},
	})
}

// RefreshToken puts the service account's current token into the
// kubeconfig at path, which FromServiceAccount wrote (the installer), if it
// differs; it reports whether it rewrote the file. A missing kubeconfig is
// not an error (changed false): nothing to keep current.
func RefreshToken(path, saDir string) (changed bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	token, err := readToken(saDir)
	if err != nil {
		return false, err
	}
	var kc map[string]any
	if err := json.Unmarshal(data, &kc); err != nil {
		return false, fmt.Errorf("%s is not a kubeconfig the installer wrote: %w", path, err)
	}
	users, _ := kc["users"].([]any)
	if len(users) != 1 {
		return false, fmt.Errorf("%s: want one user, found %d: rewrite it with warp-install", path, len(users))
	}
	u, _ := users[0].(map[string]any)
	user, _ := u["user"].(map[string]any)
	if user == nil {
		return false, fmt.Errorf("%s: the user has no credentials: rewrite it with warp-install", path)
	}
	if user["token"] == token {
		return false, nil
	}
	user["token"] = token
	out, err := encode(kc)
	if err != nil {
		return false, err
	}
	return atomicfile.Write(path, out, Mode)
}

func readToken(saDir string) (string, error) {
	token, err := os.ReadFile(filepath.Join(saDir, "token"))
	if err != nil {
		return "", fmt.Errorf("no service account token (%w): run in a pod with a service account", err)
	}
	return strings.TrimSpace(string(token)), nil
}

func encode(kc map[string]any) ([]byte, error) {
	b, err := json.MarshalIndent(kc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
