mode = "ok"
steps = 20
sleep = 0.5
