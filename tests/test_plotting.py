from vitlab import plotting


def test_durations_say_seconds_under_a_minute():
    assert plotting.duration(0.4) == "0.4 s" and plotting.duration(42.0) == "42 s" and plotting.duration(59.4) == "59 s"
    assert plotting.duration(60.0) == "1.0 min" and plotting.duration(192.0) == "3.2 min"
