package controllers

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func metav1Condition(t, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: t, Status: metav1.ConditionFalse, Reason: reason, Message: msg}
}
