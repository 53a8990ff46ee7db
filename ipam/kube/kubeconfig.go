package kube

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// DefaultKubeconfig is where warp-ipam looks for its kubeconfig unless the
// configuration's "kubeconfig" says otherwise.
const DefaultKubeconfig = "/etc/cni/net.d/warp-ipam.kubeconfig"

// kubeconfig is the part of a kubeconfig file warp-ipam understands:
// server, CA, client certificate or bearer token. Installers write such a
// file for CNI plugins (a ServiceAccount token and the cluster's CA).
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData string `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
			TLSServerName            string `json:"tls-server-name"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token                 string         `json:"token"`
			TokenFile             string         `json:"tokenFile"`
			ClientCertificate     string         `json:"client-certificate"`
			ClientCertificateData string         `json:"client-certificate-data"`
			ClientKey             string         `json:"client-key"`
			ClientKeyData         string         `json:"client-key-data"`
			Exec                  map[string]any `json:"exec"`
			AuthProvider          map[string]any `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// LoadKubeconfig reads a kubeconfig (its current context) and returns a
// client for that API server. Each request is bounded by timeout; dialing
// and the TLS handshake are bounded by it as well, so an API server that
// accepts connections but never answers cannot hang a plugin.
func LoadKubeconfig(path, userAgent string, timeout time.Duration) (*Client, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	ctxName := kc.CurrentContext
	if ctxName == "" && len(kc.Contexts) == 1 {
		ctxName = kc.Contexts[0].Name
	}
	ci := -1
	for i, c := range kc.Contexts {
		if c.Name == ctxName {
			ci = i
		}
	}
	if ci < 0 {
		return nil, fmt.Errorf("%s: no context %q (set current-context)", path, ctxName)
	}
	cctx := kc.Contexts[ci].Context
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	tlsc := &tls.Config{}
	server := ""
	for _, c := range kc.Clusters {
		if c.Name != cctx.Cluster {
			continue
		}
		server = c.Cluster.Server
		tlsc.InsecureSkipVerify = c.Cluster.InsecureSkipTLSVerify
		tlsc.ServerName = c.Cluster.TLSServerName
		ca, err := pemOf(c.Cluster.CertificateAuthorityData, rel(c.Cluster.CertificateAuthority))
		if err != nil {
			return nil, fmt.Errorf("%s: cluster %s: certificate-authority: %v", path, c.Name, err)
		}
		if ca != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, fmt.Errorf("%s: cluster %s: certificate-authority holds no PEM certificate", path, c.Name)
			}
			tlsc.RootCAs = pool
		}
	}
	if server == "" {
		return nil, fmt.Errorf("%s: context %q names cluster %q, which has no server", path, ctxName, cctx.Cluster)
	}
	token := ""
	for _, u := range kc.Users {
		if u.Name != cctx.User {
			continue
		}
		usr := u.User
		if usr.Exec != nil || usr.AuthProvider != nil {
			return nil, fmt.Errorf("%s: user %s: exec and auth-provider credentials are not supported by warp-ipam; use a token (e.g. a ServiceAccount's) or a client certificate", path, u.Name)
		}
		token = usr.Token
		if usr.TokenFile != "" {
			b, err := os.ReadFile(rel(usr.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("%s: user %s: tokenFile: %v", path, u.Name, err)
			}
			token = strings.TrimSpace(string(b))
		}
		cert, err := pemOf(usr.ClientCertificateData, rel(usr.ClientCertificate))
		if err != nil {
			return nil, fmt.Errorf("%s: user %s: client-certificate: %v", path, u.Name, err)
		}
		key, err := pemOf(usr.ClientKeyData, rel(usr.ClientKey))
		if err != nil {
			return nil, fmt.Errorf("%s: user %s: client-key: %v", path, u.Name, err)
		}
		if cert != nil || key != nil {
			pair, err := tls.X509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("%s: user %s: client certificate: %v", path, u.Name, err)
			}
			tlsc.Certificates = []tls.Certificate{pair}
		}
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsc,
		TLSHandshakeTimeout: timeout,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
	}
	var rt http.RoundTripper = tr
	if token != "" {
		rt = bearer{token: token, next: tr}
	}
	return NewClient(server, &http.Client{Transport: rt, Timeout: timeout}, userAgent), nil
}

func pemOf(data, file string) ([]byte, error) {
	if data != "" {
		return base64.StdEncoding.DecodeString(data)
	}
	if file != "" {
		return os.ReadFile(file)
	}
	return nil, nil
}

// bearer adds the token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
