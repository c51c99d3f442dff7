"""Trusted-node key relay over several hops, rerouting around a cut link, and 503 when no path is left."""

from __future__ import annotations


def consumed(twin, links):
    view = {link["id"]: link["keys_consumed_bits"] for link in twin.topology_view()["links"]}
    return {link: view[link] for link in links}


def test_relay_over_four_hops_in_line_8(twin_factory):
    twin = twin_factory("line-8", time_scale=50.0)
    path_links = ["n1-n2", "n2-n3", "n3-n4", "n4-n5"]
    twin.wait_for_key("sae-n1-1", "sae-n5-1", count=4)
    before = consumed(twin, [*path_links, "n5-n6"])

    response = twin.enc_keys("sae-n1-1", "sae-n5-1", number=4, size=256)
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    assert keys[0]["key_ID_extension"] == {"hops": 4, "path": ["N1", "N2", "N3", "N4", "N5"]}

    got = twin.dec_keys("sae-n5-1", "sae-n1-1", [k["key_ID"] for k in keys])
    assert got.status_code == 200, got.text
    assert [k["key"] for k in got.json()["keys"]] == [k["key"] for k in keys]
    assert got.json()["keys"][0]["key_ID_extension"]["hops"] == 4

    after = consumed(twin, [*path_links, "n5-n6"])
    for link in path_links:  # every hop consumed the keys' length plus a MAC key
        assert after[link] - before[link] == 4 * 256 + 256
    assert after["n5-n6"] == before["n5-n6"]
    relays = {n["id"]: n["relay_hops"] for n in twin.topology_view()["nodes"]}
    assert [relays[n] for n in ("N1", "N2", "N3", "N4", "N5")] == [0, 1, 1, 1, 0]


def test_cut_link_reroutes_in_mesh_8_then_503_without_a_path(twin_factory):
    twin = twin_factory("mesh-8", time_scale=50.0)
    master, slave = "sae-n1-1", "sae-n2-1"
    twin.wait_for_key(master, slave)
    direct = twin.enc_keys(master, slave).json()["keys"][0]["key_ID_extension"]
    assert direct["path"] == ["N1", "N2"]

    twin.admin("n1-n2", "cut")
    rerouted = twin.enc_keys(master, slave)
    assert rerouted.status_code == 200, rerouted.text
    key = rerouted.json()["keys"][0]
    assert key["key_ID_extension"]["hops"] >= 2 and "n1-n2" not in key["key_ID_extension"]["path"]
    assert key["key_ID_extension"]["path"][0] == "N1" and key["key_ID_extension"]["path"][-1] == "N2"
    assert twin.dec_keys(slave, master, [key["key_ID"]]).json()["keys"][0]["key"] == key["key"]

    # N1's other links are N8 and N5: with those cut too, N1 is isolated.
    twin.admin("n8-n1", "cut")
    twin.admin("n1-n5", "cut")
    failed = twin.enc_keys(master, slave)
    assert failed.status_code == 503
    assert failed.json()["message"]

    twin.admin("n1-n5", "restore")
    again = twin.enc_keys(master, slave)
    assert again.status_code == 200
    assert again.json()["keys"][0]["key_ID_extension"]["path"][:2] == ["N1", "N5"]
