package source

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// The informers' caches keep no managedFields; what is not an object (a
// deletion tombstone) passes unchanged.
func TestStripManagedFields(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Labels: map[string]string{"app": "web"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}}}
	got, err := stripManagedFields(svc)
	if err != nil || got.(*corev1.Service).ManagedFields != nil || got.(*corev1.Service).Labels["app"] != "web" {
		t.Fatalf("stripManagedFields(service) = %+v, %v", got, err)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "default/web", Obj: svc}
	if got, err := stripManagedFields(tomb); err != nil || got != any(tomb) {
		t.Fatalf("stripManagedFields(tombstone) = %+v, %v", got, err)
	}
}
