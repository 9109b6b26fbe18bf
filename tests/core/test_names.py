"""The sale id: one FlashSale's identity in Redis keys, ledger rows, job payloads and metrics."""

from __future__ import annotations

import pytest

from stampede.names import check_sale, sale_id, sale_keys, split_sale_id


def test_sale_id_is_namespace_and_name() -> None:
    assert sale_id("shop-a", "drop") == "shop-a/drop"
    assert split_sale_id("shop-a/drop") == ("shop-a", "drop")
    assert sale_id("", "drop") == "drop"  # a single-tenant caller
    assert split_sale_id("drop") == ("", "drop")


def test_same_name_in_two_namespaces_has_disjoint_keys_in_one_slot_each() -> None:
    a, b = sale_keys(sale_id("shop-a", "drop")), sale_keys(sale_id("shop-b", "drop"))
    assert set(a.all_static()).isdisjoint(b.all_static())
    assert all(k.startswith("stampede:{shop-a/drop}:") for k in a.all_static())


@pytest.mark.parametrize(
    ("namespace", "name"), [("Shop", "drop"), ("shop", "Drop"), ("shop/x", "drop"), ("shop", "a/b"), ("shop", "")]
)
def test_sale_id_refuses_what_is_not_a_kubernetes_name(namespace: str, name: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        sale_id(namespace, name)


@pytest.mark.parametrize("sale", ["a/b/c", "/drop", "shop/", "{x}/y", "shop/drop\n", "x" * 64])
def test_check_sale_refuses_malformed_ids(sale: str) -> None:
    with pytest.raises(ValueError, match="invalid sale"):
        check_sale(sale)
