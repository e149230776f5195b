// aigw on Azure: the gateway as a Flex Consumption Function App, its state in Cosmos DB (counters, cache,
// health), usage in Table Storage and a queue, telemetry in Application Insights, backend keys in Key Vault,
// and one user-assigned identity holding every data-plane role (no keys, no connection strings).
// Deploy: az deployment group create -g <group> -f infra/main.bicep -p @infra/main.parameters.json
targetScope = 'resourceGroup'

@description('Region of the Function App, storage, Key Vault and monitoring.')
param location string = resourceGroup().location

@description('Region of the Cosmos DB account (serverless accounts have one region).')
param cosmosLocation string = location

@description('Prefix of every resource name; a hash of the resource group makes names unique.')
@minLength(2)
@maxLength(8)
param namePrefix string = 'aigw'

@description('Existing Azure OpenAI resources the gateway calls: [{name, resourceGroup, endpoint, region, deployments, subscriptionId?}]; the identity gets Cognitive Services OpenAI User on each.')
param openAiBackends array = []

@description('Dimensions of the semantic cache embeddings (1536: text-embedding-3-small, ada-002).')
param embeddingDimensions int = 1536

@allowed([
  'flat'
  'quantizedFlat'
  'diskANN'
])
param vectorIndexType string = 'quantizedFlat'

@description('AIGW_CONFIG: the gateway config file, relative to the app root (publish it with the app).')
param gatewayConfig string = 'gateway.yaml'

@description('AIGW_HEALTH_CRON: when the timer trigger probes the backends (NCRONTAB with seconds).')
param healthCron string = '*/30 * * * * *'

@description('AIGW_USAGE_SWEEP_CRON: when the timer trigger summarises usage batches whose queue message was lost.')
param usageSweepCron string = '0 */5 * * * *'

@description('App setting name -> Key Vault secret name, for backend and client keys (set the secrets after deploying).')
param keyVaultSecrets object = {}

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Concurrent HTTP requests per instance: the gateway is async and mostly waits on backends.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('Storage redundancy: zone-redundant by default; Standard_LRS in a region without availability zones.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

param tags object = {}

var suffix = uniqueString(resourceGroup().id)
var databaseName = 'aigw'
var deploymentContainerName = 'app-package'
// The usage store (AIGW_USAGE_URL, tables://): records and summaries, the summary queue and its poison queue.
var usageTables = [
  'aigwusage'
  'aigwsummaries'
]
var usageQueues = [
  'aigw-usage'
  'aigw-usage-poison'
]

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: '${namePrefix}-id-${suffix}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: '${namePrefix}-log-${suffix}'
    appInsightsName: '${namePrefix}-appi-${suffix}'
    location: location
    identityPrincipalId: identity.outputs.principalId
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: take(toLower(replace('${namePrefix}st${suffix}', '-', '')), 24)
    location: location
    identityPrincipalId: identity.outputs.principalId
    skuName: storageSku
    deploymentContainerName: deploymentContainerName
    tables: usageTables
    queues: usageQueues
    tags: tags
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  params: {
    accountName: toLower('${namePrefix}-cosmos-${suffix}')
    location: cosmosLocation
    identityPrincipalId: identity.outputs.principalId
    databaseName: databaseName
    embeddingDimensions: embeddingDimensions
    vectorIndexType: vectorIndexType
    tags: tags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: take('${namePrefix}-kv-${suffix}', 24)
    location: location
    identityPrincipalId: identity.outputs.principalId
    tags: tags
  }
}

module openAiRoles 'modules/openai-role.bicep' = [
  for backend in openAiBackends: {
    name: 'openai-role-${backend.name}'
    // The resource's own group, in another subscription when the backend names one.
    scope: resourceGroup(backend.?subscriptionId ?? subscription().subscriptionId, backend.resourceGroup)
    params: {
      accountName: backend.name
      principalId: identity.outputs.principalId
    }
  }
]

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: '${namePrefix}-func-${suffix}'
    planName: '${namePrefix}-plan-${suffix}'
    location: location
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsConnectionString: monitoring.outputs.connectionString
    cosmosEndpoint: cosmos.outputs.endpoint
    usageUrl: 'tables://${storage.outputs.name}'
    gatewayConfig: gatewayConfig
    healthCron: healthCron
    usageSweepCron: usageSweepCron
    keyVaultName: keyVault.outputs.name
    keyVaultSecrets: keyVaultSecrets
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    tags: tags
  }
  // The host starts as soon as the app exists, so its roles come first: those on storage, Cosmos DB, Key Vault
  // and Application Insights are inside the modules whose outputs it takes; the backends' are not.
  dependsOn: [
    openAiRoles
  ]
}

@description('The gateway\'s base URL: an Azure OpenAI endpoint (routePrefix is empty).')
output functionUrl string = 'https://${functionApp.outputs.defaultHostName}'
output functionAppName string = functionApp.outputs.name
output identityClientId string = identity.outputs.clientId
output identityPrincipalId string = identity.outputs.principalId
output cosmosEndpoint string = cosmos.outputs.endpoint
output storageAccountName string = storage.outputs.name
output keyVaultName string = keyVault.outputs.name
@description('The backends as gateway config entries that call as the identity: the `backends:` of gateway.yaml.')
output gatewayBackends array = [
  for backend in openAiBackends: {
    name: backend.name
    url: backend.endpoint
    region: backend.region
    auth: {
      type: 'entra'
      managed_identity_client_id_env: 'AIGW_IDENTITY_CLIENT_ID'
    }
    deployments: backend.deployments
  }
]
