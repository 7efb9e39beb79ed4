"""Python side of billiard-host: the exception classes its Celery workers
raise, so a Celery client can catch them by type.

    import billiard_host.exceptions  # once, before .get()
    try:
        app.send_task("faults.fail", args=["x"]).get()
    except billiard_host.exceptions.PluginError as e:
        ...
"""
