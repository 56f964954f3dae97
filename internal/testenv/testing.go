package testenv

import (
	"context"
	"testing"
)

// PostgresT starts PostgreSQL for one test and stops it at cleanup.
func PostgresT(t testing.TB) *Postgres {
	t.Helper()
	pg, err := StartPostgres(context.Background(), DefaultPostgresConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return pg
}

// KafkaT starts kfake for one test and stops it at cleanup.
func KafkaT(t testing.TB, cfg KafkaConfig) *Kafka {
	t.Helper()
	k, err := StartKafka(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// KratosT starts Kratos for one test and stops it at cleanup.
func KratosT(t testing.TB) *Kratos {
	t.Helper()
	kr, err := StartKratos(context.Background(), DefaultKratosConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kr.Close() })
	return kr
}

// KubeT starts a control plane for one test and stops it at cleanup. A
// package whose tests share one cluster starts it in TestMain with
// StartKube instead.
func KubeT(t testing.TB, cfg KubeConfig) *Kube {
	t.Helper()
	k, err := StartKube(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}
