"""The one set of test doubles: a scripted feed, a recording processor and the pillow rig.
Time has its own double in the package, `changefeed.testing.clock.FakeClock`."""
