package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// ErrUnreachable is wrapped by every error that means the API server did
// not answer (connection refused, timeout, TLS failure) or answered that it
// cannot serve now (5xx, 429): the caller should try again later.
var ErrUnreachable = errors.New("the API server cannot be reached")

// APIError is an answer of the API server other than success.
type APIError struct {
	Method, Path string
	Code         int
	Reason       string // the Status reason: NotFound, AlreadyExists, Conflict, ...
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Code, e.Reason, e.Message)
}

func reasonOf(err error) (int, string) {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code, ae.Reason
	}
	return 0, ""
}

// IsNotFound reports a 404.
func IsNotFound(err error) bool { c, _ := reasonOf(err); return c == http.StatusNotFound }

// IsAlreadyExists reports a create refused because the name is taken.
func IsAlreadyExists(err error) bool {
	c, r := reasonOf(err)
	return c == http.StatusConflict && r == "AlreadyExists"
}

// IsConflict reports a write refused by a resourceVersion or UID
// precondition (someone else wrote the object meanwhile).
func IsConflict(err error) bool {
	c, r := reasonOf(err)
	return c == http.StatusConflict && r != "AlreadyExists"
}

// Client is a typed client for what warp-ipam reads and writes, over plain
// HTTP and JSON: a CNI plugin is a new process per call, and client-go's
// packages would cost it more at start-up than its requests. warpd and
// warpctl hand it client-go's configured http.Client (NewClient); warp-ipam
// loads its kubeconfig with LoadKubeconfig.
type Client struct {
	http *http.Client
	base string // scheme://host[:port][/prefix]
	ua   string
	// Server is the API server's address, for messages.
	Server string
}

// NewClient returns a client for the API server at server (an URL, or
// host:port for https), sending requests through hc, which carries the
// credentials.
func NewClient(server string, hc *http.Client, userAgent string) *Client {
	base := strings.TrimRight(server, "/")
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	return &Client{http: hc, base: base, ua: userAgent, Server: base}
}

const (
	poolsPath       = "/apis/" + Group + "/" + Version + "/ippools"
	allocationsPath = "/apis/" + Group + "/" + Version + "/ipallocations"
	// asMetadataList asks for names and labels only.
	asMetadataList = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
)

// status is the body of an API server error.
type status struct {
	Kind    string `json:"kind"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// do sends one request; body (if not nil) is JSON-encoded, and the answer
// decoded into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, accept string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	if c.ua != "" {
		req.Header.Set("User-Agent", c.ua)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w (%s): %s %s: %v", ErrUnreachable, c.Server, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("%w (%s): %s %s: reading the answer: %v", ErrUnreachable, c.Server, method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode the answer: %v", method, path, err)
		}
		return nil
	}
	ae := &APIError{Method: method, Path: path, Code: resp.StatusCode, Message: strings.TrimSpace(string(data))}
	var st status
	if json.Unmarshal(data, &st) == nil && st.Kind == "Status" {
		ae.Reason, ae.Message = st.Reason, st.Message
	}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		return fmt.Errorf("%w (%s): %w", ErrUnreachable, c.Server, ae)
	}
	return ae
}

// Pod is the part of a Pod that warp-ipam reads.
type Pod struct {
	ObjectMeta `json:"metadata"`
	Spec       struct {
		NodeName string `json:"nodeName,omitempty"`
	} `json:"spec"`
}

// StatefulSet returns the StatefulSet controlling the pod and the pod's
// ordinal (the number after the StatefulSet's name), if it has one.
func (p *Pod) StatefulSet() (*StatefulSetRef, bool) {
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller || o.Kind != "StatefulSet" || !strings.HasPrefix(o.APIVersion, "apps/") {
			continue
		}
		ord, ok := Ordinal(p.Name, o.Name)
		if !ok {
			return nil, false
		}
		return &StatefulSetRef{Name: o.Name, Ordinal: ord}, true
	}
	return nil, false
}

// Ordinal parses the ordinal of StatefulSet sts's pod named pod
// ("web-3" → 3).
func Ordinal(pod, sts string) (int, bool) {
	rest, ok := strings.CutPrefix(pod, sts+"-")
	if !ok || rest == "" || len(rest) > 9 {
		return 0, false
	}
	n := 0
	for _, r := range rest {
		if r < '0' || r > '9' {
			return 0, false
		}
		n = n*10 + int(r-'0')
	}
	return n, true
}

// GetPod reads a pod.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*Pod, error) {
	var p Pod
	err := c.do(ctx, http.MethodGet, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(name), nil, "", nil, &p)
	return &p, err
}

type objectWithMeta struct {
	ObjectMeta `json:"metadata"`
}

// NodeLabels reads a Node's labels.
func (c *Client) NodeLabels(ctx context.Context, name string) (map[string]string, error) {
	var o objectWithMeta
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, "", nil, &o)
	return o.Labels, err
}

// NamespaceLabels reads a Namespace's labels.
func (c *Client) NamespaceLabels(ctx context.Context, name string) (map[string]string, error) {
	var o objectWithMeta
	err := c.do(ctx, http.MethodGet, "/api/v1/namespaces/"+url.PathEscape(name), nil, "", nil, &o)
	return o.Labels, err
}

// ListPools lists every IPPool.
func (c *Client) ListPools(ctx context.Context) ([]IPPool, error) {
	var l IPPoolList
	err := c.do(ctx, http.MethodGet, poolsPath, nil, "", nil, &l)
	return l.Items, err
}

// CreatePool creates an IPPool.
func (c *Client) CreatePool(ctx context.Context, p *IPPool) (*IPPool, error) {
	p.APIVersion, p.Kind = APIVersion, "IPPool"
	var out IPPool
	err := c.do(ctx, http.MethodPost, poolsPath, nil, "", p, &out)
	return &out, err
}

// DeletePool deletes an IPPool.
func (c *Client) DeletePool(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, poolsPath+"/"+url.PathEscape(name), nil, "", nil, nil)
}

// GetAllocation reads one allocation by name.
func (c *Client) GetAllocation(ctx context.Context, name string) (*IPAllocation, error) {
	var a IPAllocation
	err := c.do(ctx, http.MethodGet, allocationsPath+"/"+url.PathEscape(name), nil, "", nil, &a)
	return &a, err
}

// CreateAllocation creates an allocation: the claim of its address. It
// fails with IsAlreadyExists when the address is held.
func (c *Client) CreateAllocation(ctx context.Context, a *IPAllocation) (*IPAllocation, error) {
	a.APIVersion, a.Kind = APIVersion, "IPAllocation"
	var out IPAllocation
	err := c.do(ctx, http.MethodPost, allocationsPath, nil, "", a, &out)
	return &out, err
}

// UpdateAllocation replaces an allocation; its resourceVersion is the
// precondition (IsConflict when someone wrote it meanwhile).
func (c *Client) UpdateAllocation(ctx context.Context, a *IPAllocation) (*IPAllocation, error) {
	a.APIVersion, a.Kind = APIVersion, "IPAllocation"
	var out IPAllocation
	err := c.do(ctx, http.MethodPut, allocationsPath+"/"+url.PathEscape(a.Name), nil, "", a, &out)
	return &out, err
}

type preconditions struct {
	UID             string `json:"uid,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

type deleteOptions struct {
	TypeMeta      `json:",inline"`
	Preconditions *preconditions `json:"preconditions,omitempty"`
}

// DeleteAllocation deletes an allocation if it is still the object with
// uid (and, when resourceVersion is not empty, unchanged since it was
// read); otherwise it fails with IsConflict. Deleting a missing one fails
// with IsNotFound.
func (c *Client) DeleteAllocation(ctx context.Context, name, uid, resourceVersion string) error {
	opts := deleteOptions{TypeMeta: TypeMeta{APIVersion: "v1", Kind: "DeleteOptions"}}
	if uid != "" || resourceVersion != "" {
		opts.Preconditions = &preconditions{UID: uid, ResourceVersion: resourceVersion}
	}
	return c.do(ctx, http.MethodDelete, allocationsPath+"/"+url.PathEscape(name), nil, "", opts, nil)
}

// ListAllocations lists allocations matching a label selector ("" for
// all), read consistently (not from a possibly stale cache).
func (c *Client) ListAllocations(ctx context.Context, selector string) ([]IPAllocation, error) {
	q := url.Values{}
	if selector != "" {
		q.Set("labelSelector", selector)
	}
	var l IPAllocationList
	err := c.do(ctx, http.MethodGet, allocationsPath, q, "", nil, &l)
	return l.Items, err
}

// ListAllocationNames lists the names of allocations matching a label
// selector, without their specs: a cheap view of which addresses are held.
// With fromCache it is served from the API server's cache
// (resourceVersion=0), cheaper but possibly missing the latest changes: for
// hints, never for a claim.
func (c *Client) ListAllocationNames(ctx context.Context, selector string, fromCache bool) ([]string, error) {
	q := url.Values{}
	if fromCache {
		q.Set("resourceVersion", "0")
	}
	if selector != "" {
		q.Set("labelSelector", selector)
	}
	var l struct {
		Items []objectWithMeta `json:"items"`
	}
	if err := c.do(ctx, http.MethodGet, allocationsPath, q, asMetadataList, nil, &l); err != nil {
		return nil, err
	}
	names := make([]string, len(l.Items))
	for i, it := range l.Items {
		names[i] = it.Name
	}
	return names, nil
}
