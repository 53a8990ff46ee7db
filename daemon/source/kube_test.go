package source

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// The informers cache each kind trimmed to what warpd reads (the trims'
// own tests say what that is); anything else loses its managedFields, and
// what is not an object (a deletion tombstone) passes unchanged.
func TestTrim(t *testing.T) {
	managed := []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Labels: map[string]string{"app": "web"}, ManagedFields: managed},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}}
	if got, err := trim(svc); err != nil || got != any(svc) || svc.ManagedFields != nil || svc.Labels != nil || svc.Spec.Selector != nil {
		t.Errorf("trim(service) = %+v, %v", got, err)
	}
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default", ManagedFields: managed,
		Labels: map[string]string{discoveryv1.LabelServiceName: "web", "app": "web"}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.2"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-1"}}}}
	if got, err := trim(es); err != nil || got != any(es) || es.ManagedFields != nil || len(es.Labels) != 1 || es.Endpoints[0].TargetRef != nil {
		t.Errorf("trim(endpointslice) = %+v, %v", got, err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", ManagedFields: managed},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"app:v1"}}}}}
	if got, err := trim(node); err != nil || got != any(node) || node.ManagedFields != nil || node.Status.Images != nil {
		t.Errorf("trim(node) = %+v, %v", got, err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c", Labels: map[string]string{"app": "web"}, ManagedFields: managed}}
	if got, err := trim(cm); err != nil || cm.ManagedFields != nil || cm.Labels["app"] != "web" {
		t.Errorf("trim(configmap) = %+v, %v", got, err)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "default/web", Obj: svc}
	if got, err := trim(tomb); err != nil || got != any(tomb) {
		t.Errorf("trim(tombstone) = %+v, %v", got, err)
	}
}
