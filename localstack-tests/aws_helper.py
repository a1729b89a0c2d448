#!/usr/bin/env python3
"""AWS calls the end-to-end tests make as an operator would (boto3 against AWS_ENDPOINT_URL).

The test crate calls this instead of linking the EC2/SQS SDKs (aws-sdk-ec2 stays in lambda/ only).
Every command prints one JSON value on stdout; errors go to stderr with exit status 1.

  instances TAG_KEY CLUSTER        ids of running/stopped instances carrying TAG_KEY=CLUSTER (sorted)
  state ID                         the instance's state name ("missing" if EC2 does not know it)
  start ID...                      StartInstances (an operator bringing a fenced host back)
  run-untagged                     one instance without the cluster tag, returns its id
  rule NAME                        the EventBridge rule's schedule expression and state
  function-env NAME                the Lambda function's environment variables
  subscribe TOPIC_ARN              a new SQS queue subscribed to the topic, returns its URL
  receive QUEUE_URL                messages waiting in the queue (SNS envelopes' Message, parsed)
"""
import json
import os
import sys
import uuid

import boto3


def client(service):
    return boto3.client(service, endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def instances(tag_key, cluster):
    out = client("ec2").describe_instances(Filters=[{"Name": f"tag:{tag_key}", "Values": [cluster]}])
    ids = [i["InstanceId"] for r in out["Reservations"] for i in r["Instances"]
           if i["State"]["Name"] not in ("terminated", "shutting-down")]
    return sorted(ids)


def state(instance_id):
    ec2 = client("ec2")
    try:
        out = ec2.describe_instances(InstanceIds=[instance_id])
    except ec2.exceptions.ClientError as e:
        if "InvalidInstanceID" in str(e):
            return "missing"
        raise
    found = [i for r in out["Reservations"] for i in r["Instances"]]
    return found[0]["State"]["Name"] if found else "missing"


def start(*ids):
    client("ec2").start_instances(InstanceIds=list(ids))
    return {i: state(i) for i in ids}


def run_untagged():
    ec2 = client("ec2")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    out = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                            TagSpecifications=[{"ResourceType": "instance",
                                                "Tags": [{"Key": "Name", "Value": "not-in-any-cluster"}]}])
    return out["Instances"][0]["InstanceId"]


def rule(name):
    r = client("events").describe_rule(Name=name)
    return {"schedule_expression": r.get("ScheduleExpression"), "state": r.get("State")}


def function_env(name):
    c = client("lambda").get_function_configuration(FunctionName=name)
    return c.get("Environment", {}).get("Variables", {})


def subscribe(topic_arn):
    sqs = client("sqs")
    url = sqs.create_queue(QueueName=f"pgdaemon-events-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn,
                            Attributes={"RawMessageDelivery": "false"})
    return url


def receive(url):
    sqs = client("sqs")
    out = []
    for _ in range(5):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            break
        for m in got:
            body = json.loads(m["Body"])
            msg = body.get("Message", m["Body"])
            try:
                msg = json.loads(msg)
            except (TypeError, ValueError):
                pass
            out.append({"subject": body.get("Subject"), "message": msg})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


COMMANDS = {
    "instances": instances, "state": state, "start": start, "run-untagged": run_untagged,
    "rule": rule, "function-env": function_env, "subscribe": subscribe, "receive": receive,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    try:
        print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
    except Exception as e:  # one clear line for the test's failure message
        print(f"{sys.argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
